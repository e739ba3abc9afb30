import { useEffect, useState } from "react";
import { currentSession, isAdmin, onSession, setSession, type Session } from "./api";
import { Login } from "./pages/Login";
import { Dashboard } from "./pages/Dashboard";
import { Pipelines } from "./pages/Pipelines";
import { PipelineDetail } from "./pages/PipelineDetail";
import { Editor } from "./pages/Editor";
import { Connectors } from "./pages/Connectors";
import { MonitoringPage } from "./pages/Monitoring";
import { Dlq } from "./pages/Dlq";
import { Audit } from "./pages/Audit";

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
      <main id="main" tabIndex={-1}>{page}</main>
    </div>
  );
}
