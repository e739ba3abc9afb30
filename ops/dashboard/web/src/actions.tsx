import { useState } from "react";
import { api, canMutate, isAdmin, type Pipeline, type Session } from "./api";
import { Problem } from "./ui";

/** Run / pause / resume / stop (operators) and delete (admins); a viewer gets none. */
export function Actions({ p, session, done }: { p: Pipeline; session: Session; done: () => void }) {
  const [error, setError] = useState<unknown>();
  if (!canMutate(session)) return null;
  async function act(what: string) {
    if (what === "delete" && !confirm(`Delete pipeline ${p.name}?`)) return;
    try {
      if (what === "delete") await api("DELETE", `/api/v1/pipelines/${p.id}`);
      else await api("POST", `/api/v1/pipelines/${p.id}/${what}`);
      setError(undefined);
      done();
    } catch (e) { setError(e); }
  }
  const shown = {
    run: p.desired === "stopped", pause: p.desired === "running",
    resume: p.desired === "paused", stop: p.desired !== "stopped",
  };
  return (
    <span className="actions" data-testid="actions">
      {(Object.keys(shown) as (keyof typeof shown)[]).filter((k) => shown[k]).map((k) => (
        <button key={k} onClick={() => act(k)} aria-label={`${k} ${p.name}`}>{k}</button>))}
      {isAdmin(session) && <>
        <a className="button" href={`#/editor/${p.id}`} aria-label={`edit ${p.name}`}>edit</a>
        <button className="danger" onClick={() => act("delete")} aria-label={`delete ${p.name}`}>
          delete</button></>}
      <Problem error={error} />
    </span>
  );
}
