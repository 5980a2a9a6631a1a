import { createRoot } from "react-dom/client";
import { App } from "./App.jsx";

// The sidecar: ?sidewire=http://host:port, else $VITE_SIDEWIRE_URL, else the default port.
const params = new URLSearchParams(location.search);
const url = params.get("sidewire") || import.meta.env.VITE_SIDEWIRE_URL || "http://127.0.0.1:8790";

createRoot(document.getElementById("root")).render(<App url={url} token={params.get("token") || undefined} />);
