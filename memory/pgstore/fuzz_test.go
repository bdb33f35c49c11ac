package pgstore

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/memory"
	"github.com/loom-dev/loom/memory/memoryrpc"
)

var placeholder = regexp.MustCompile(`\$(\d+)`)

// FuzzCompileFilter checks that every filter a request can carry (wire bytes that pass protovalidate and
// memory.ValidateFilter) compiles without panicking, that user values only ever travel
// as parameters (every $n is bound, and no key or string value appears in the SQL text), and that parentheses
// balance.
func FuzzCompileFilter(f *testing.F) {
	lo := 1.0
	for _, flt := range []*memoryv1.Filter{
		{Kind: &memoryv1.Filter_Field{Field: &memoryv1.FieldCondition{Key: "k'); DROP TABLE x; --", Op: &memoryv1.FieldCondition_Eq{Eq: &memoryv1.Scalar{Kind: &memoryv1.Scalar_StringValue{StringValue: "' OR 1=1 --"}}}}}},
		{Kind: &memoryv1.Filter_Not{Not: &memoryv1.Filter{Kind: &memoryv1.Filter_Field{Field: &memoryv1.FieldCondition{Key: "n", Op: &memoryv1.FieldCondition_Range{Range: &memoryv1.Range{Gt: &lo}}}}}}},
		{Kind: &memoryv1.Filter_Any{Any: &memoryv1.FilterList{Filters: []*memoryv1.Filter{{Kind: &memoryv1.Filter_Field{Field: &memoryv1.FieldCondition{Key: "e", Op: &memoryv1.FieldCondition_Exists{Exists: false}}}}}}}},
	} {
		b, _ := proto.Marshal(flt)
		f.Add(b)
	}
	v, err := protovalidate.New()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var pf memoryv1.Filter
		if proto.Unmarshal(b, &pf) != nil || v.Validate(&pf) != nil {
			return
		}
		flt := memoryrpc.FilterFromProto(&pf)
		if memory.ValidateFilter("filter", flt) != nil {
			return
		}
		var sb strings.Builder
		var a args
		if err := compileFilter(&sb, &a, flt); err != nil {
			t.Fatalf("valid filter does not compile: %v", err)
		}
		sql := sb.String()
		for _, m := range placeholder.FindAllStringSubmatch(sql, -1) {
			n, _ := strconv.Atoi(m[1])
			if n < 1 || n > len(a) {
				t.Fatalf("placeholder $%d with %d args", n, len(a))
			}
		}
		if strings.Count(sql, "(") != strings.Count(sql, ")") {
			t.Fatalf("unbalanced SQL: %s", sql)
		}
		if strings.Contains(sql, "'") && strings.Count(sql, "'")%2 != 0 {
			t.Fatalf("odd quotes in SQL: %s", sql)
		}
		if strings.Contains(sql, "DROP") || strings.Contains(sql, "--") {
			t.Fatalf("user text in SQL: %s", sql)
		}
	})
}
