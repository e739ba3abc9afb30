import { useState, type FormEvent } from "react";
import { login } from "../api";
import { Problem } from "../ui";

export function Login() {
  const [user, setUser] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    try { await login(user, password); } catch (err) { setError(err); } finally { setBusy(false); }
  }
  return (
    <main className="login">
      <form onSubmit={submit} aria-label="log in">
        <h1>DataFlow</h1>
        <label>User <input name="username" autoComplete="username" value={user} autoFocus
                           onChange={(e) => setUser(e.target.value)} required /></label>
        <label>Password <input name="password" type="password" autoComplete="current-password"
                               value={password} onChange={(e) => setPassword(e.target.value)}
                               required /></label>
        <button type="submit" disabled={busy}>Log in</button>
        <Problem error={error} />
      </form>
    </main>
  );
}
