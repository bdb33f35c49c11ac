package sqldbtest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/loom-dev/loom/internal/sqldb"
)

// ReadCounts returns db's loom_db_reads_total (its [sqldb.DB.ReadMetrics]) by "target/reason", for example
// "replica/ok": every series the counter has, zero ones included.
func ReadCounts(t testing.TB, db *sqldb.DB) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(db.ReadMetrics())
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "loom_db_reads_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			var target, reason string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "target":
					target = l.GetValue()
				case "reason":
					reason = l.GetValue()
				}
			}
			out[target+"/"+reason] = m.GetCounter().GetValue()
		}
	}
	return out
}
