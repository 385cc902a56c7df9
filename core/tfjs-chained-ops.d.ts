// tfjs-core registers chained tensor methods (t.reshape(), ...) at runtime, but their type
// augmentations are only visible once this module is part of the program.
import '@tensorflow/tfjs-core/dist/public/chained_ops/register_all_chained_ops';
