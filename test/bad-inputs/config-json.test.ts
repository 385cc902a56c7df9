/**
 * Bad config.json in a model folder: missing, not JSON, nested without end, fields missing, of the
 * wrong type, zero, negative or infinite, an unknown architecture, head counts that do not divide,
 * rope_scaling that is not an object, and weights whose shapes disagree with it. Run by
 * model-folder-cases.ts: `lowrank inspect` exits 2 with one line naming config.json and the field,
 * and the app's models.inspect gives the same `{code, message}`.
 */
import * as fs from 'node:fs';
import { deeplyNestedJson } from './broken-files.ts';
import { configFile, describeFolderCases, setConfig, type FolderCase } from './model-folder-cases.ts';

const cases: FolderCase[] = [
  {
    name: 'missing',
    damage: (dir) => (fs.rmSync(configFile(dir)), configFile(dir)),
    code: 'FILE_NOT_FOUND',
    mentions: ['not found', 'needs config.json'],
  },
  {
    name: 'not JSON (a trailing comma on line 3)',
    damage: (dir) => (fs.writeFileSync(configFile(dir), '{\n  "architectures": ["LlamaForCausalLM"],\n  "hidden_size": 32,\n}\n'), configFile(dir)),
    code: 'BAD_CONFIG',
    mentions: ['not valid JSON', 'line 4 column 1'],
  },
  {
    name: 'JSON nested 100,000 levels deep',
    damage: (dir) => (fs.writeFileSync(configFile(dir), deeplyNestedJson(100_000)), configFile(dir)),
    code: 'BAD_CONFIG',
    mentions: ['not valid JSON', 'nested deeper than'],
  },
  {
    name: 'a JSON array at the top level',
    extended: true,
    damage: (dir) => (fs.writeFileSync(configFile(dir), '[{"architectures": ["LlamaForCausalLM"]}]'), configFile(dir)),
    code: 'BAD_CONFIG',
    mentions: ['JSON object'],
  },
  {
    name: '"architectures" missing',
    extended: true,
    damage: setConfig({ architectures: undefined }),
    code: 'BAD_CONFIG',
    mentions: ['"architectures"', 'LlamaForCausalLM'],
  },
  {
    name: '"architectures" a string, not a list',
    damage: setConfig({ architectures: 'LlamaForCausalLM' }),
    code: 'BAD_CONFIG',
    mentions: ['"architectures"', 'must be a list', 'got "LlamaForCausalLM"'],
  },
  {
    name: 'unknown architecture (BertForMaskedLM)',
    damage: setConfig({ architectures: ['BertForMaskedLM'] }),
    code: 'UNKNOWN_ARCHITECTURE',
    mentions: ['"BertForMaskedLM"', 'not supported', 'LlamaForCausalLM'],
  },
  {
    name: 'hidden_size missing',
    damage: setConfig({ hidden_size: undefined }),
    code: 'BAD_CONFIG',
    mentions: ['field "hidden_size"', 'got undefined'],
  },
  {
    name: 'intermediate_size not an integer (64.5)',
    damage: setConfig({ intermediate_size: 64.5 }),
    code: 'BAD_CONFIG',
    mentions: ['field "intermediate_size"', 'integer', 'got 64.5'],
  },
  {
    name: 'vocab_size a string ("96")',
    extended: true,
    damage: setConfig({ vocab_size: '96' }),
    code: 'BAD_CONFIG',
    mentions: ['field "vocab_size"', 'got "96"'],
  },
  {
    name: 'num_hidden_layers negative',
    damage: setConfig({ num_hidden_layers: -2 }),
    code: 'BAD_CONFIG',
    mentions: ['field "num_hidden_layers"', 'got -2'],
  },
  {
    name: 'num_hidden_layers zero',
    damage: setConfig({ num_hidden_layers: 0 }),
    code: 'BAD_CONFIG',
    mentions: ['field "num_hidden_layers"', 'positive integer', 'got 0'],
  },
  {
    name: 'num_attention_heads zero',
    extended: true,
    damage: setConfig({ num_attention_heads: 0 }),
    code: 'BAD_CONFIG',
    mentions: ['field "num_attention_heads"', 'positive integer', 'got 0'],
  },
  {
    name: 'hidden_size 1e400 (Infinity once parsed)',
    damage: (dir) => {
      const text = fs.readFileSync(configFile(dir), 'utf8').replace(/"hidden_size": \d+/, '"hidden_size": 1e400');
      fs.writeFileSync(configFile(dir), text);
      return configFile(dir);
    },
    code: 'BAD_CONFIG',
    mentions: ['field "hidden_size"', 'got Infinity'],
  },
  {
    name: 'heads that do not divide hidden_size (no head_dim)',
    damage: setConfig({ head_dim: undefined, num_attention_heads: 5, num_key_value_heads: 5 }),
    code: 'BAD_CONFIG',
    mentions: ['hidden_size (32)', 'divisible by num_attention_heads (5)'],
  },
  {
    name: 'key/value heads that do not divide the heads',
    extended: true,
    damage: setConfig({ num_key_value_heads: 3 }),
    code: 'BAD_CONFIG',
    mentions: ['num_attention_heads (4)', 'multiple of num_key_value_heads (3)'],
  },
  {
    name: 'GPT-2: n_embd not divisible by n_head',
    extended: true,
    kind: 'gpt2',
    damage: setConfig({ n_head: 5 }),
    code: 'BAD_CONFIG',
    mentions: ['n_embd', 'divisible by n_head (5)'],
  },
  {
    name: 'rope_scaling a string, not an object',
    damage: setConfig({ rope_scaling: 'linear' }),
    code: 'BAD_CONFIG',
    mentions: ['rope_scaling', 'object', 'got "linear"'],
  },
  {
    name: 'rope_scaling type not supported (yarn)',
    extended: true,
    damage: setConfig({ rope_scaling: { rope_type: 'yarn', factor: 4 } }),
    code: 'BAD_CONFIG',
    mentions: ['rope_scaling type "yarn"', 'linear, llama3'],
  },
  {
    name: 'weight shapes disagree with config.json',
    damage: (dir) => void setConfig({ intermediate_size: 72 })(dir),
    code: 'SHAPE_MISMATCH',
    mentions: [/mlp\.(gate|up|down)_proj\.weight/, '72', 'config.json'],
  },
  {
    name: '--model names config.json instead of its folder',
    extended: true,
    damage: (dir) => configFile(dir),
    modelArg: (dir) => configFile(dir),
    code: 'BAD_ARGUMENT',
    mentions: ['is a file, not a model folder'],
  },
];

describeFolderCases('config.json', cases);
