package agent

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// Names of the built-in tools, as the model sees them. A delegate tool is named DelegatePrefix + the agent's
// name.
const (
	ToolMemorySearch = "memory_search"
	ToolMemorySave   = "memory_save"
	ToolHTTPFetch    = "http_fetch"
	DelegatePrefix   = "delegate_"
)

// maxSimLatency bounds a sim script's latency. Ten minutes is twice the default run time budget: enough to
// model any slow provider, while a latency of hours would only hold a run (and a worker of the orchestrator
// calling it) until its time budget ends.
const maxSimLatency = 10 * time.Minute

// toolNamePattern is what a user-named tool's name looks like (the contract's pattern for webhook tools).
var toolNamePattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,47}$`)

// elevenLabsVoice is what an ElevenLabs voice id looks like: letters and digits (20 of them today), with "_" and
// "-" allowed inside; nothing that could carry a path, a query or an option.
var elevenLabsVoice = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// espeakVoice is what an espeak-ng voice name looks like ("en-us", "de", "en+f3", "mb-en1").
var espeakVoice = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_+-]{0,63}$`)

// EspeakVoice reports whether name looks like an espeak-ng voice name ("en-us", "de", "en+f3", "mb-en1"):
// letters, digits, "_", "-" and "+", not starting with "-" or "+", at most 64 characters.
func EspeakVoice(name string) bool { return espeakVoice.MatchString(name) }

// ToolName is the name the model sees for t: a built-in's fixed name, DelegatePrefix + the delegate's agent,
// or the user's name of a webhook, MCP or client tool; "" for a tool of no known kind.
func ToolName(t *agentv1.Tool) string {
	switch k := t.GetKind().(type) {
	case *agentv1.Tool_MemorySearch:
		return ToolMemorySearch
	case *agentv1.Tool_MemorySave:
		return ToolMemorySave
	case *agentv1.Tool_HttpFetch:
		return ToolHTTPFetch
	case *agentv1.Tool_Delegate:
		return DelegatePrefix + k.Delegate.GetAgent()
	case *agentv1.Tool_Webhook:
		return k.Webhook.GetName()
	case *agentv1.Tool_Mcp:
		return MCPName(k.Mcp)
	case *agentv1.Tool_Client:
		return k.Client.GetName()
	}
	return ""
}

// MCPName is the name the model sees for t: its name, or the server's tool name when it sets none.
func MCPName(t *agentv1.McpTool) string {
	if t.GetName() != "" {
		return t.GetName()
	}
	return t.GetTool()
}

// builtinTool reports whether name is (or could be) a built-in tool's name.
func builtinTool(name string) bool {
	switch name {
	case ToolMemorySearch, ToolMemorySave, ToolHTTPFetch:
		return true
	}
	return strings.HasPrefix(name, DelegatePrefix)
}

// CheckAgent checks what protovalidate cannot express, or can only express apart from the rest of the agent:
// tool names are unique; an agent does not delegate to itself; memory tools need a memory namespace; webhook,
// MCP and client tools pass CheckWebhook, CheckMCP and CheckClientTool; http_fetch allow-lists hold host names,
// not wildcards for everything; the sim latency is at most 10 minutes; the voice passes CheckVoice. field is the
// agent's path in the request ("agent"). The error is a *FieldError naming the first offending field.
func CheckAgent(a *agentv1.Agent, field string) error {
	seen := map[string]bool{}
	for i, t := range a.GetTools() {
		path := fmt.Sprintf("%s.tools[%d]", field, i)
		name := ToolName(t)
		if seen[name] {
			return &FieldError{Field: path, Reason: fmt.Sprintf("duplicate tool %q", name)}
		}
		seen[name] = true
		switch k := t.GetKind().(type) {
		case *agentv1.Tool_Delegate:
			if k.Delegate.GetAgent() == a.GetName() {
				return &FieldError{Field: path + ".delegate.agent", Reason: fmt.Sprintf("agent %q cannot delegate to itself", a.GetName())}
			}
		case *agentv1.Tool_MemorySearch, *agentv1.Tool_MemorySave:
			if a.GetMemory().GetNamespace() == "" {
				return &FieldError{Field: path, Reason: fmt.Sprintf("%s needs a memory namespace: set %s.memory.namespace", name, field)}
			}
		case *agentv1.Tool_Webhook:
			if err := CheckWebhook(k.Webhook, path+".webhook"); err != nil {
				return err
			}
		case *agentv1.Tool_Mcp:
			if err := CheckMCP(k.Mcp, path+".mcp"); err != nil {
				return err
			}
		case *agentv1.Tool_Client:
			if err := CheckClientTool(k.Client, path+".client"); err != nil {
				return err
			}
		case *agentv1.Tool_HttpFetch:
			for j, h := range k.HttpFetch.GetAllowedHosts() {
				if reason := allowedHostProblem(h); reason != "" {
					return &FieldError{Field: fmt.Sprintf("%s.http_fetch.allowed_hosts[%d]", path, j), Reason: reason}
				}
			}
		}
	}
	if d := a.GetModel().GetSim().GetLatency(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 || d.AsDuration() > maxSimLatency {
			return &FieldError{Field: field + ".model.sim.latency", Reason: fmt.Sprintf("must be between 0 and %v", maxSimLatency)}
		}
	}
	if err := CheckVoice(a.GetVoice(), field+".voice"); err != nil {
		return err
	}
	return nil
}

// allowedHostProblem says what is wrong with an http_fetch allow-list entry, or "" when it is a host name, an IP
// literal, or "*." followed by a domain of at least two labels. "*", "*.com", "**", "a*.b" and "x.*.y" are refused:
// they would allow (nearly) every host, which is what the allow-list exists to prevent. Public suffixes of two
// labels ("*.co.uk") cannot be told apart without the public suffix list and are accepted. Internal addresses
// and names are refused anyway by the address policy at fetch time, whatever the list says.
func allowedHostProblem(h string) string {
	host := strings.TrimSuffix(strings.ToLower(h), ".")
	rest, wild := strings.CutPrefix(host, "*.")
	if strings.Contains(rest, "*") || (!wild && strings.Contains(host, "*")) {
		return `a wildcard is allowed only as a leading "*." before a domain, as in "*.example.com"`
	}
	if rest == "" || strings.ContainsAny(rest, " /?#@\\") {
		return "not a host name"
	}
	if wild && strings.Count(rest, ".") < 1 {
		return fmt.Sprintf("%q would allow every host under %q: name a domain of at least two labels", h, rest)
	}
	return ""
}

// CheckVoice refuses a voice id that is not a plain id of its provider, when the agent is saved rather than at
// synthesis: espeak-ng voice names are letters, digits, "_", "-" and "+" (espeak's own voice+variant syntax, as in
// "en+f3"; the name is passed as one argument, never through a shell, and may not start with "-" or "+");
// ElevenLabs voice ids are letters and digits. An empty id is accepted (the provider's default). field is the
// voice's path in the request; the error is a *FieldError on field + ".voice_id".
func CheckVoice(v *agentv1.Voice, field string) error {
	id := v.GetVoiceId()
	if id == "" {
		return nil
	}
	switch v.GetProvider() {
	case agentv1.VoiceProvider_VOICE_PROVIDER_ELEVENLABS:
		if !elevenLabsVoice.MatchString(id) {
			return &FieldError{Field: field + ".voice_id", Reason: "not an ElevenLabs voice id (letters, digits, _ and -, starting with a letter or digit)"}
		}
	default:
		if !espeakVoice.MatchString(id) {
			return &FieldError{Field: field + ".voice_id", Reason: "not an espeak-ng voice name (letters, digits, _, - and +, not starting with - or +)"}
		}
	}
	return nil
}

// CheckClientTool checks a client tool when an agent is saved or a run request declares it: a name that is not
// a built-in's, parameters that are a valid JSON Schema (CheckParameters). path is the tool's path in the
// request; the error is a *FieldError.
func CheckClientTool(c *agentv1.ClientTool, path string) error {
	if builtinTool(c.GetName()) {
		return &FieldError{Field: path + ".name", Reason: fmt.Sprintf("%q is a built-in tool's name", c.GetName())}
	}
	return CheckParameters(c.GetParameters(), path+".parameters")
}

// CheckMCP checks an MCP tool at save time: a valid tool name (MCPName) that is not a built-in's, and either a
// registered server's name or an absolute http(s) URL without user info, not both. The address policy is
// applied at call time, and the server's existence when a run starts. path is the tool's path in the request;
// the error is a *FieldError.
func CheckMCP(t *agentv1.McpTool, path string) error {
	name := MCPName(t)
	if !toolNamePattern.MatchString(name) {
		return &FieldError{Field: path + ".name", Reason: fmt.Sprintf("%q is not a valid tool name: set name", TruncatePath(name))}
	}
	if builtinTool(name) {
		return &FieldError{Field: path + ".name", Reason: fmt.Sprintf("%q is a built-in tool's name", name)}
	}
	switch {
	case t.GetUrl() != "" && t.GetServer() != "":
		return &FieldError{Field: path + ".server", Reason: "set url or server, not both"}
	case t.GetServer() != "":
		return nil
	}
	u, err := url.Parse(t.GetUrl())
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return &FieldError{Field: path + ".url", Reason: "must be an absolute http or https URL without user info (or set server)"}
	}
	return nil
}
