// The session: the credential the user pasted (an API key "loom_<id>_<secret>" or an OIDC bearer token), kept in
// sessionStorage only (gone when the tab closes), sent as "Authorization: Bearer ...", and who it makes the
// caller: tenant, subject and roles, and the server's auth mode, as AdminService.WhoAmI reports them (any role may
// call it; it has no side effects). Only when WhoAmI fails for a reason other than a refused credential does the
// console fall back to the tenant and roles claims of an OIDC token, for display only: the server verifies the
// token on every call.

import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { AdminService } from "../../gen/ts/loom/admin/v1/admin_pb";

const KEY = "loom.credential";

export type Role = "reader" | "writer" | "admin";
const RANK: Record<Role, number> = { reader: 1, writer: 2, admin: 3 };

/** Identity is who the console acts as. */
export interface Identity {
  /** "local" (no credentials, --auth local), "key", "token" or "none" (signed out under --auth required). */
  kind: "local" | "key" | "token" | "none";
  /** Tenant, when known. */
  tenant: string;
  /** Roles held; empty when unknown or signed out. */
  roles: Role[];
  /** A line for people: how the identity was found. */
  note: string;
  /** Subject as the server reports it ("apikey:<id>", a token's subject, "local-dev"), when known. */
  subject: string;
}

export interface Session {
  baseUrl: string;
  transport: Transport;
  /** The server's auth mode, "local" or "required", as WhoAmI reports it; empty when unknown. */
  authMode: string;
  identity: Identity;
  /** can reports whether the caller's roles include role (roles are ordered: admin > writer > reader). */
  can(role: Role): boolean;
  credential(): string;
  signIn(credential: string): Promise<void>;
  signOut(): Promise<void>;
  onChange(fn: () => void): void;
}

/** apiBaseUrl: the origin of the Loom server (this page's, or <meta name="loom-api"> on a copy hosted elsewhere). */
function apiBaseUrl(): string {
  const meta = document.querySelector<HTMLMetaElement>('meta[name="loom-api"]');
  return meta?.content || window.location.origin;
}

function readCredential(): string {
  try {
    return sessionStorage.getItem(KEY) ?? "";
  } catch {
    return "";
  }
}

/** decodeJWT returns a JWT's claims without verifying it, or null. */
function decodeJWT(token: string): Record<string, unknown> | null {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const text = new TextDecoder().decode(Uint8Array.from(atob(b64 + "===".slice((b64.length + 3) % 4)), (c) => c.charCodeAt(0)));
    const claims = JSON.parse(text);
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

function asRoles(v: unknown): Role[] {
  const list = Array.isArray(v) ? v : typeof v === "string" ? v.split(/\s+/) : [];
  return list.filter((r): r is Role => r === "reader" || r === "writer" || r === "admin");
}

export async function newSession(): Promise<Session> {
  const baseUrl = apiBaseUrl();
  let cred = readCredential();
  const listeners: (() => void)[] = [];
  const auth: Interceptor = (next) => (req) => {
    if (cred) req.header.set("Authorization", `Bearer ${cred}`);
    return next(req);
  };
  const transport = createConnectTransport({ baseUrl, interceptors: [auth] });

  const forget = () => {
    cred = "";
    try {
      sessionStorage.removeItem(KEY);
    } catch {
      // Storage disabled: nothing was kept.
    }
  };
  // refresh asks the server who the current credential makes the caller, and forgets a refused credential.
  const refresh = async () => {
    const r = await identify(transport, cred, session.authMode);
    session.identity = r.identity;
    session.authMode = r.authMode;
    if (cred && r.identity.kind === "none") forget();
  };
  const session: Session = {
    baseUrl,
    transport,
    authMode: "",
    identity: { kind: "none", tenant: "", roles: [], note: "", subject: "" },
    can(role) {
      return session.identity.roles.some((r) => RANK[r] >= RANK[role]);
    },
    credential: () => cred,
    async signIn(c) {
      cred = c.trim();
      try {
        sessionStorage.setItem(KEY, cred);
      } catch {
        // Storage disabled: the credential lives until reload.
      }
      await refresh();
      listeners.forEach((f) => f());
    },
    async signOut() {
      forget();
      await refresh();
      listeners.forEach((f) => f());
    },
    onChange(fn) {
      listeners.push(fn);
    },
  };
  await refresh();
  return session;
}

/** identify asks the server who the credential makes the caller (AdminService.WhoAmI). It throws nothing. */
async function identify(transport: Transport, cred: string, authMode: string): Promise<{ identity: Identity; authMode: string }> {
  const admin = createClient(AdminService, transport);
  const claims = cred.startsWith("loom_") ? null : decodeJWT(cred);
  const keyId = cred.startsWith("loom_") ? cred.split("_")[1] ?? "" : "";
  const none = (note: string, mode = authMode) => ({ identity: { kind: "none" as const, tenant: "", roles: [], subject: "", note }, authMode: mode });
  let me;
  try {
    me = await admin.whoAmI({});
  } catch (err) {
    const ce = ConnectError.from(err);
    if (ce.code === Code.Unauthenticated) {
      if (!cred) return none("Sign in: this server requires an API key or token (--auth required).", "required");
      return none(`Signed out: the server refused this credential (${ce.rawMessage}).`);
    }
    // Fallback, display only (the server checks every call): the claims an OIDC token carries.
    if (claims) {
      const identity: Identity = {
        kind: "token",
        tenant: String(claims["loom_tenant"] ?? ""),
        roles: asRoles(claims["loom_roles"]),
        subject: String(claims["sub"] ?? ""),
        note: `OIDC token${claims["iss"] ? ` from ${claims["iss"]}` : ""} (claims not confirmed by the server: ${ce.rawMessage})`,
      };
      return { identity, authMode };
    }
    return none(`Could not check the credential: ${ce.rawMessage}`);
  }
  const mode = me.authMode || authMode;
  const id = { tenant: me.tenant, roles: asRoles(me.roles), subject: me.subject };
  if (!cred) {
    const note = `Local mode (--auth local): calls without credentials act as tenant "${me.tenant}" with every role.`;
    return { identity: { ...id, kind: "local", note }, authMode: mode };
  }
  if (claims) {
    return { identity: { ...id, kind: "token", note: `OIDC token${claims["iss"] ? ` from ${claims["iss"]}` : ""}` }, authMode: mode };
  }
  // An admin may list the tenant's keys, so the note can name the key; nobody else is asked.
  let note = `API key ${keyId}`;
  if (id.roles.includes("admin")) {
    try {
      const mine = (await admin.listApiKeys({})).keys.find((k) => k.id === keyId);
      if (mine) note = `API key "${mine.name}" (${mine.id})`;
    } catch {
      // The name is decoration: the identity above is the server's.
    }
  }
  return { identity: { ...id, kind: "key", note }, authMode: mode };
}
