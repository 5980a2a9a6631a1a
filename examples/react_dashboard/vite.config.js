import { defineConfig } from "vite";

// No React plugin needed: esbuild compiles JSX (no fast refresh, which a
// dashboard this small does not miss).
export default defineConfig({
  esbuild: { jsx: "automatic" },
  build: { target: "es2020" },
});
