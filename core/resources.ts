/** Where the app's shipped assets are: the bundled base model and sample data. */
import * as path from 'node:path';

export const RESOURCES_DIR = path.resolve(import.meta.dirname, '..', 'resources');
/** The project's own pre-trained base model (see its README for how it was built). */
export const BUNDLED_MODEL_NAME = 'brown-llama';
export const BUNDLED_MODEL_DIR = path.join(RESOURCES_DIR, 'models', BUNDLED_MODEL_NAME);
