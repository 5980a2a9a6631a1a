import { useSidewire } from "./useSidewire.js";

const CARDS = ["eventsTotal", "eventsPerMinute", "filesProcessed", "queriesCompleted", "errors", "activeConnections"];

export function App({ url, token }) {
  const { state, events, stats, error, notice } = useSidewire({ url, token });
  return (
    <main style={{ fontFamily: "system-ui, sans-serif", margin: "1.5rem", maxWidth: 900 }}>
      <h1 style={{ fontSize: "1.4rem" }}>
        sidewire <span id="state" data-state={state}>{state}</span>
      </h1>
      {error && <p id="error">error: {error.code}</p>}
      {notice && <p id="notice">{notice}</p>}
      <section id="stats" style={{ display: "flex", gap: "1rem", flexWrap: "wrap" }}>
        {CARDS.map((k) => (
          <div key={k} data-stat={k} style={{ border: "1px solid #ccc", padding: ".5rem 1rem", borderRadius: 6 }}>
            <div style={{ fontSize: ".8rem", color: "#666" }}>{k}</div>
            <div className="value">{stats?.[k] ?? "—"}</div>
          </div>
        ))}
      </section>
      <h2 style={{ fontSize: "1.1rem" }}>Live events</h2>
      <ul id="feed" style={{ listStyle: "none", padding: 0 }}>
        {events.map((e) => (
          <li key={e.seq} data-seq={e.seq} data-type={e.type} style={{ padding: ".25rem 0", borderBottom: "1px solid #eee" }}>
            <code>#{e.seq}</code> <b>{e.type}</b> <small>{e.timestamp}</small> <code>{JSON.stringify(e.data)}</code>
          </li>
        ))}
      </ul>
    </main>
  );
}
