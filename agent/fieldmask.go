package agent

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// mutableAgentFields are the top-level Agent fields an update may name. name is the key; version, etag and
// the times are output only.
var mutableAgentFields = map[string]bool{
	"display_name": true, "model": true, "instructions": true, "tools": true, "memory": true, "budgets": true,
	"voice": true, "chaos": true,
}

const (
	maxMaskPaths   = 64
	maxMaskPathLen = 256
)

// ApplyMask copies the fields of src named by paths into dst. Paths use proto field names separated by dots,
// for example "instructions" or "model.name"; a path whose field is unset in src clears it in dst. Every path is
// checked before anything is copied: an empty, unknown, output-only or immutable path is a *FieldError on
// "update_mask" naming it, and dst is left unchanged. No paths at all is also an error.
func ApplyMask(dst, src *agentv1.Agent, paths []string) error {
	if len(paths) == 0 {
		return &FieldError{Field: "update_mask", Reason: "no paths given"}
	}
	if len(paths) > maxMaskPaths {
		return &FieldError{Field: "update_mask", Reason: fmt.Sprintf("%d paths, at most %d allowed", len(paths), maxMaskPaths)}
	}
	desc := (&agentv1.Agent{}).ProtoReflect().Descriptor()
	fields := make([][]protoreflect.FieldDescriptor, len(paths))
	for i, p := range paths {
		fds, err := resolvePath(desc, p)
		if err != nil {
			return err
		}
		fields[i] = fds
	}
	src = proto.CloneOf(src) // dst must not alias src's messages and lists
	if src == nil {
		src = &agentv1.Agent{}
	}
paths:
	for _, fds := range fields {
		dm, sm := dst.ProtoReflect(), src.ProtoReflect()
		for _, fd := range fds[:len(fds)-1] {
			if !sm.Has(fd) && !dm.Has(fd) {
				continue paths // clearing a field of an unset message: nothing to do
			}
			sm = sm.Get(fd).Message()
			dm = dm.Mutable(fd).Message()
		}
		last := fds[len(fds)-1]
		if sm.Has(last) {
			dm.Set(last, sm.Get(last))
		} else {
			dm.Clear(last)
		}
	}
	return nil
}

// resolvePath turns "a.b" into field descriptors, checking every segment.
func resolvePath(desc protoreflect.MessageDescriptor, path string) ([]protoreflect.FieldDescriptor, error) {
	bad := func(reason string) error {
		return &FieldError{Field: "update_mask", Reason: fmt.Sprintf("path %q: %s", TruncatePath(path), reason)}
	}
	if path == "" {
		return nil, bad("empty path")
	}
	if len(path) > maxMaskPathLen {
		return nil, bad("too long")
	}
	segs := strings.Split(path, ".")
	if !mutableAgentFields[segs[0]] {
		if desc.Fields().ByName(protoreflect.Name(segs[0])) != nil {
			return nil, bad("field is output-only or immutable")
		}
		return nil, bad("unknown field")
	}
	var fds []protoreflect.FieldDescriptor
	for i, seg := range segs {
		if desc == nil {
			return nil, bad(fmt.Sprintf("%q is not a message field", segs[i-1]))
		}
		fd := desc.Fields().ByName(protoreflect.Name(seg))
		if fd == nil || seg == "" {
			return nil, bad("unknown field")
		}
		fds = append(fds, fd)
		desc = nil
		if fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() && !isWellKnown(fd.Message()) {
			desc = fd.Message()
		}
	}
	return fds, nil
}

// isWellKnown reports messages treated as scalars: a path cannot descend into a Duration or Struct.
func isWellKnown(md protoreflect.MessageDescriptor) bool {
	return strings.HasPrefix(string(md.FullName()), "google.protobuf.")
}

// TruncatePath shortens p to 64 bytes and an ellipsis, for quoting client input in an error message.
func TruncatePath(p string) string {
	if len(p) > 64 {
		p = p[:64] + "..."
	}
	return strings.ToValidUTF8(p, "\uFFFD")
}
