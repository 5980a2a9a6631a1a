import { useEffect, useReducer } from "react";
import { connect } from "sidewire-client/dashboard";

const initial = { state: "connecting", events: [], stats: null, error: null, notice: null };

function reducer(s, a) {
  switch (a.kind) {
    case "state":
      return { ...s, state: a.state };
    case "event":
      // Newest first, at most `keep`; the client hands each event over once, in seq order.
      return { ...s, events: [a.event, ...s.events].slice(0, a.keep) };
    case "stats":
      return { ...s, stats: a.stats };
    case "error":
      return { ...s, error: a.error };
    case "resume":
      return a.info.truncated ? { ...s, notice: `some history skipped (replayed ${a.info.replayed})` } : s;
    default:
      return s;
  }
}

/**
 * The live feed of a sidewire sidecar as React state:
 * `const { state, events, stats, error } = useSidewire({ url })`.
 * One client per mounted component (options are read when `url`, `token`
 * or `types` change); it reconnects and resumes by itself and is closed on
 * unmount.
 */
export function useSidewire({ url, token, types, keep = 200 }) {
  const [s, dispatch] = useReducer(reducer, initial);
  const typesKey = types ? types.join(",") : "";
  useEffect(() => {
    const client = connect({ url, token, types: typesKey ? typesKey.split(",") : undefined });
    const offs = [
      client.on("state", (state) => dispatch({ kind: "state", state })),
      client.on("event", (event) => dispatch({ kind: "event", event, keep })),
      client.on("stats", (stats) => dispatch({ kind: "stats", stats })),
      client.on("error", (error) => dispatch({ kind: "error", error })),
      client.on("resume", (info) => dispatch({ kind: "resume", info })),
    ];
    return () => {
      offs.forEach((off) => off());
      client.close();
    };
  }, [url, token, typesKey, keep]);
  return s;
}
