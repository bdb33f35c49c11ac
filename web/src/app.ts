// What every view gets: the session, one client per service, and navigation.

import { createClient, type Client } from "@connectrpc/connect";
import { AdminService } from "../../gen/ts/loom/admin/v1/admin_pb";
import { AgentService } from "../../gen/ts/loom/agent/v1/agent_pb";
import { MemoryService } from "../../gen/ts/loom/memory/v1/memory_pb";
import { OrchestratorService } from "../../gen/ts/loom/orchestrator/v1/orchestrator_pb";
import type { Role, Session } from "./session";

export interface App {
  session: Session;
  orch: Client<typeof OrchestratorService>;
  agents: Client<typeof AgentService>;
  memory: Client<typeof MemoryService>;
  admin: Client<typeof AdminService>;
  can(role: Role): boolean;
  /** go navigates to a route such as "#/runs/abc". */
  go(hash: string): void;
}

/** A view renders into root for the route's parameters; signal aborts when the user leaves the view. */
export type View = (app: App, root: HTMLElement, params: string[], signal: AbortSignal) => void | Promise<void>;

export function newApp(session: Session): App {
  const t = session.transport;
  return {
    session,
    orch: createClient(OrchestratorService, t),
    agents: createClient(AgentService, t),
    memory: createClient(MemoryService, t),
    admin: createClient(AdminService, t),
    can: (r) => session.can(r),
    go(hash) {
      if (location.hash === hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
      else location.hash = hash;
    },
  };
}
