// The session: the credential the user pasted (an API key "loom_<id>_<secret>" or an OIDC bearer token), kept in
// sessionStorage only (gone when the tab closes), sent as "Authorization: Bearer ...", and who it makes the
// caller: tenant and roles.
//
// The contracts have no "who am I" RPC, so the console works the identity out without side effects where it
// can: the server's auth mode from /healthz (header Loom-Auth-Mode); for an OIDC token, the tenant and roles
// claims it carries (display only: the server verifies the token on every call); for an API key, the roles by
// asking AdminService.ListApiKeys (admin only; it also names the key), and failing that an empty, invalid
// CreateNamespace request, which the server refuses before any work: PermissionDenied for a reader,
// InvalidArgument for a writer. The tenant of an API key is not reported by any RPC.

import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { AdminService } from "../../gen/ts/loom/admin/v1/admin_pb";
import { MemoryService } from "../../gen/ts/loom/memory/v1/memory_pb";

const KEY = "loom.credential";
// The identity found for the stored credential, kept beside it so a reload does not probe again (the probe of a
// non-admin key is an audited, refused call). Written and removed together with the credential.
const IDENTITY = "loom.identity";

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
  /** Subject (key id or token subject), when known. */
  subject: string;
}

export interface Session {
  baseUrl: string;
  transport: Transport;
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

  let authMode = "";
  try {
    const res = await fetch(`${baseUrl}/healthz`, { cache: "no-store" });
    authMode = res.headers.get("Loom-Auth-Mode") ?? "";
  } catch {
    // Unknown mode: the identity probe below still tells signed-in from refused.
  }

  const forget = () => {
    cred = "";
    try {
      sessionStorage.removeItem(KEY);
      sessionStorage.removeItem(IDENTITY);
    } catch {
      // Storage disabled: nothing was kept.
    }
  };
  const session: Session = {
    baseUrl,
    transport,
    authMode,
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
      session.identity = await identify(transport, cred, authMode);
      if (session.identity.kind === "none") forget(); // never keep a refused credential
      else remember(session.identity);
      listeners.forEach((f) => f());
    },
    async signOut() {
      forget();
      session.identity = await identify(transport, cred, authMode);
      listeners.forEach((f) => f());
    },
    onChange(fn) {
      listeners.push(fn);
    },
  };
  session.identity = (cred && cached()) || (await identify(transport, cred, authMode));
  if (cred && session.identity.kind === "none") forget();
  else if (cred) remember(session.identity);
  return session;
}

function remember(id: Identity): void {
  try {
    sessionStorage.setItem(IDENTITY, JSON.stringify(id));
  } catch {
    // Storage disabled: identify again next time.
  }
}

function cached(): Identity | null {
  try {
    const id = JSON.parse(sessionStorage.getItem(IDENTITY) ?? "null") as Identity | null;
    return id && (id.kind === "key" || id.kind === "token") && Array.isArray(id.roles) ? id : null;
  } catch {
    return null;
  }
}

/** identify works out who the credential makes the caller (see the file comment). It throws nothing. */
async function identify(transport: Transport, cred: string, authMode: string): Promise<Identity> {
  if (!cred) {
    if (authMode === "required") {
      return { kind: "none", tenant: "", roles: [], subject: "", note: "Sign in: this server requires an API key or token (--auth required)." };
    }
    return {
      kind: "local",
      tenant: "local",
      roles: ["admin"],
      subject: "local-dev",
      note: "Local mode (--auth local): calls without credentials act as tenant \"local\" with every role.",
    };
  }
  const admin = createClient(AdminService, transport);
  const memory = createClient(MemoryService, transport);
  const claims = cred.startsWith("loom_") ? null : decodeJWT(cred);
  const keyId = cred.startsWith("loom_") ? cred.split("_")[1] ?? "" : "";
  let roles: Role[] = [];
  let note = "";
  try {
    const res = await admin.listApiKeys({});
    const mine = res.keys.find((k) => k.id === keyId);
    roles = mine ? asRoles(mine.roles) : ["admin"];
    if (!roles.includes("admin")) roles.push("admin");
    note = mine ? `API key "${mine.name}" (${mine.id})` : "";
  } catch (err) {
    const ce = ConnectError.from(err);
    if (ce.code === Code.Unauthenticated) {
      return { kind: "none", tenant: "", roles: [], subject: "", note: `Signed out: the server refused this credential (${ce.rawMessage}).` };
    }
    if (ce.code !== Code.PermissionDenied) {
      return { kind: "none", tenant: "", roles: [], subject: "", note: `Could not check the credential: ${ce.rawMessage}` };
    }
    try {
      await memory.createNamespace({});
      roles = ["writer"];
    } catch (err2) {
      const c2 = ConnectError.from(err2);
      roles = c2.code === Code.PermissionDenied ? ["reader"] : ["writer"];
    }
  }
  if (claims) {
    const tenant = String(claims["loom_tenant"] ?? "");
    const claimed = asRoles(claims["loom_roles"]);
    return {
      kind: "token",
      tenant,
      roles: roles.length ? roles : claimed,
      subject: String(claims["sub"] ?? ""),
      note: `OIDC token${claims["iss"] ? ` from ${claims["iss"]}` : ""}`,
    };
  }
  return {
    kind: "key",
    tenant: "",
    roles,
    subject: keyId,
    note: note || `API key ${keyId}` + " (the server does not report a key's tenant)",
  };
}
