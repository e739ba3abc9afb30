import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// Served by `dataflow api` at /ui (assets at /ui/assets/<hashed name>); nothing loads
// from another host.
export default defineConfig({
  base: "/ui/",
  plugins: [react()],
  build: { outDir: "dist", assetsDir: "assets", chunkSizeWarningLimit: 800 },
});
