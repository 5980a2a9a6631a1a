// Lint: typescript-eslint's recommended type-aware rules on src/, the
// recommended JavaScript rules on scripts, tests and the page.
import js from "@eslint/js";
import tseslint from "typescript-eslint";
import globals from "globals";

export default tseslint.config(
  { ignores: ["dist/", "node_modules/", "src/messages.ts", "test/types/"] },
  js.configs.recommended,
  {
    files: ["src/**/*.ts"],
    extends: [...tseslint.configs.recommendedTypeChecked],
    languageOptions: { parserOptions: { project: "./tsconfig.json", tsconfigRootDir: import.meta.dirname } },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/only-throw-error": "off",
    },
  },
  {
    files: ["**/*.mjs", "page/**/*.js"],
    languageOptions: { globals: { ...globals.node, ...globals.browser }, sourceType: "module" },
  },
);
