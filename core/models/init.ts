/**
 * Fresh weights for pre-training from scratch, as transformers' _init_weights does:
 * linear and embedding weights ~ N(0, initializer_range), norms = 1, biases = 0; the output
 * projections of each residual branch scaled by 1/√(2·layers) (GPT-2 paper, §2.3) so the
 * residual stream's variance does not grow with depth.
 */
import * as tf from '../tf.ts';
import { Random } from '../random.ts';
import { expectedWeights, type ModelConfig } from './config.ts';

export function initialWeights(config: ModelConfig, seed: number, initializerRange = 0.02): Map<string, tf.Tensor> {
  const rng = new Random(seed);
  const weights = new Map<string, tf.Tensor>();
  const residualScale = 1 / Math.sqrt(2 * config.numLayers);
  for (const [name, shape] of expectedWeights(config)) {
    const size = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(size);
    if (/(norm|ln_\d|ln_f)\.weight$/.test(name)) {
      data.fill(1);
    } else if (!name.endsWith('.bias')) {
      const isResidualOut = /(o_proj|down_proj|attn\.c_proj|mlp\.c_proj)\.weight$/.test(name);
      const std = initializerRange * (isResidualOut ? residualScale : 1);
      for (let i = 0; i < size; i++) data[i] = rng.normal() * std;
    }
    weights.set(name, tf.tensor(data, shape));
  }
  return weights;
}
