// The renderer's build: Vue SFCs -> renderer/dist (served by `lowrank serve`, loaded by Electron).
import { defineConfig } from 'vite';
import vue from '@vitejs/plugin-vue';

export default defineConfig({
  root: import.meta.dirname,
  base: './',
  plugins: [vue()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // No eval, no inline scripts: the page runs under a strict Content-Security-Policy.
    modulePreload: { polyfill: false },
    chunkSizeWarningLimit: 1500,
  },
});
