import { useState } from "react";
import { api, type CatalogEntry } from "../api";
import { SchemaForm } from "../schemaform";
import { Problem, useAsync } from "../ui";

const SECTIONS: [string, string][] = [["/api/v1/connectors", "Connectors"],
  ["/api/v1/transformations", "Transformations"], ["/api/v1/quality/rules", "Quality rules"]];

export function Connectors() {
  const [section, setSection] = useState(SECTIONS[0][0]);
  const [items, error] = useAsync(() => api<{ items: CatalogEntry[] }>("GET", section).then((r) => r.items),
                                  [section]);
  const [open, setOpen] = useState<string>();
  return (
    <section>
      <h1>Catalog</h1>
      <div className="tabs" role="tablist">{SECTIONS.map(([path, label]) =>
        <button key={path} role="tab" aria-selected={section === path}
                onClick={() => { setSection(path); setOpen(undefined); }}>{label}</button>)}</div>
      <Problem error={error} />
      <div className="catalog">
        {(items ?? []).map((c) => {
          const key = `${c.role ?? ""}:${c.kind}`;
          return (
            <article key={key} className="entry" data-testid={`catalog-${c.kind}`}>
              <h3>{c.kind} {c.role && <span className="badge">{c.role}</span>}</h3>
              <p>{c.description}</p>
              <button aria-expanded={open === key} onClick={() => setOpen(open === key ? undefined : key)}>
                {open === key ? "Hide form" : "Settings form"}</button>
              {open === key && <SchemaForm schema={c.json_schema} title={c.kind} />}
            </article>);
        })}
      </div>
    </section>
  );
}
