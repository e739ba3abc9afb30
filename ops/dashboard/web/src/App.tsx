import { lazy, Suspense, useEffect, useState } from "react";
import { currentSession, isAdmin, onSession, setSession, type Session } from "./api";
import { Login } from "./pages/Login";

// One chunk per page, fetched when the page is first opened (the login page is in the
// entry chunk: it is the first paint), so no page waits for another's code or Chart.js.
const Dashboard = lazy(() => import("./pages/Dashboard").then((m) => ({ default: m.Dashboard })));
const Pipelines = lazy(() => import("./pages/Pipelines").then((m) => ({ default: m.Pipelines })));
const PipelineDetail = lazy(() => import("./pages/PipelineDetail")
  .then((m) => ({ default: m.PipelineDetail })));
const Editor = lazy(() => import("./pages/Editor").then((m) => ({ default: m.Editor })));
const Connectors = lazy(() => import("./pages/Connectors").then((m) => ({ default: m.Connectors })));
const MonitoringPage = lazy(() => import("./pages/Monitoring")
  .then((m) => ({ default: m.MonitoringPage })));
const Dlq = lazy(() => import("./pages/Dlq").then((m) => ({ default: m.Dlq })));
const Audit = lazy(() => import("./pages/Audit").then((m) => ({ default: m.Audit })));

function useHash(): string {
  const [hash, setHash] = useState(location.hash || "#/");
  useEffect(() => {
    const f = () => setHash(location.hash || "#/");
    addEventListener("hashchange", f);
    return () => removeEventListener("hashchange", f);
  }, []);
  return hash;
}

function useSession(): Session | null {
  const [s, setS] = useState<Session | null>(currentSession());
  useEffect(() => onSession(() => setS(currentSession())), []);
  return s;
}

const NAV: [string, string][] = [
  ["#/", "Dashboard"], ["#/pipelines", "Pipelines"], ["#/editor", "Spec editor"],
  ["#/connectors", "Connectors"], ["#/monitoring", "Monitoring"], ["#/dlq", "Dead letters"],
];

export function App() {
  const session = useSession();
  const hash = useHash();
  const [menu, setMenu] = useState(false);
  if (session === null) return <Login />;
  const path = hash.slice(1).split("?")[0];
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const nav = isAdmin(session) ? [...NAV, ["#/audit", "Audit"] as [string, string]] : NAV;
  let page;
  if (parts.length === 0) page = <Dashboard />;
  else if (parts[0] === "pipelines" && parts[1]) page = <PipelineDetail id={parts[1]} session={session} />;
  else if (parts[0] === "pipelines") page = <Pipelines session={session} />;
  else if (parts[0] === "editor") page = <Editor id={parts[1]} session={session} />;
  else if (parts[0] === "connectors") page = <Connectors />;
  else if (parts[0] === "monitoring") page = <MonitoringPage />;
  else if (parts[0] === "dlq") page = <Dlq id={parts[1]} session={session} />;
  else if (parts[0] === "audit" && isAdmin(session)) page = <Audit />;
  else page = <p>No such page.</p>;
  const current = "#/" + (parts[0] ?? "");
  return (
    <div className="layout">
      <a className="skip" href="#main" onClick={(e) => { e.preventDefault();
        document.getElementById("main")?.focus(); }}>Skip to content</a>
      <header className="top">
        <button className="menu-btn" aria-expanded={menu} aria-controls="nav"
                onClick={() => setMenu(!menu)}>☰ <span className="sr">menu</span></button>
        <strong className="brand">DataFlow</strong>
        <span className="who" data-testid="who">{session.user} · {session.role}</span>
        <button onClick={() => { setSession(null); location.hash = "#/"; }}>Log out</button>
      </header>
      <nav id="nav" className={menu ? "open" : ""} aria-label="main">
        {nav.map(([href, label]) => (
          <a key={href} href={href} onClick={() => setMenu(false)}
             aria-current={current === href || (href === "#/" && current === "#/") ? "page" : undefined}>
            {label}</a>))}
      </nav>
      <main id="main" tabIndex={-1}><Suspense fallback={<p className="muted">Loading…</p>}>{page}</Suspense></main>
    </div>
  );
}
