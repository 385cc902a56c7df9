/**
 * The one way the project imports TensorFlow.js. tfjs-core alone registers neither gradients nor
 * the chained tensor methods (`t.reshape()`); the `@tensorflow/tfjs` package does both as a side
 * effect (its node bundle shares the same tfjs-core instance). PROD silences tfjs' console banners.
 */
import '@tensorflow/tfjs';
import * as tf from '@tensorflow/tfjs-core';

tf.env().set('PROD', true);

export * from '@tensorflow/tfjs-core';
