// The Loom console: a plain-DOM page that talks to the server it is served from with Connect-Web.

import { createConnectTransport } from "@connectrpc/connect-web";
import { mountAgents } from "./agents";
import { mountMemory } from "./memory";
import { mountOrchestrator } from "./orchestrator";
import { byTestId } from "./status";

/**
 * apiBaseUrl is the origin of the Loom server. The embedded console is served by that server, so it is this page's
 * origin; a copy of the page hosted elsewhere may name the server with <meta name="loom-api" content="https://...">.
 */
function apiBaseUrl(): string {
  const meta = document.querySelector<HTMLMetaElement>('meta[name="loom-api"]');
  return meta?.content || window.location.origin;
}

function main(): void {
  const transport = createConnectTransport({ baseUrl: apiBaseUrl() });
  mountMemory(transport);
  mountAgents(transport);
  mountOrchestrator(transport);
  byTestId("app-ready").hidden = false;
  document.body.dataset.ready = "true";
}

main();
