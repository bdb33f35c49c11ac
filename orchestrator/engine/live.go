package engine

import (
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/orchestrator"
)

// liveBuffer is how many live events a watcher may fall behind by; beyond it, deltas are dropped for that watcher
// (the stored StepOutput carries the whole text).
const liveBuffer = 256

// live fans the live-only events of the runs this process executes (agent text deltas) out to the watchers in
// this process, and tells them when a run's events were committed. Watchers are keyed by tenant and run, so a
// subscription never sees another tenant's run. Safe for concurrent use; with no watchers a publish costs one
// atomic load.
type live struct {
	n    atomic.Int64 // watchers
	mu   sync.Mutex
	subs map[string]map[*watcher]struct{}
}

type watcher struct {
	deltas  chan *orchestratorv1.WatchRunResponse
	changed chan struct{}
}

func liveKey(tenant, id string) string { return tenant + "/" + id }

// follow subscribes to run id of tenant until stop is called.
func (l *live) follow(tenant, id string) orchestrator.Live {
	w := &watcher{deltas: make(chan *orchestratorv1.WatchRunResponse, liveBuffer), changed: make(chan struct{}, 1)}
	key := liveKey(tenant, id)
	l.mu.Lock()
	if l.subs == nil {
		l.subs = map[string]map[*watcher]struct{}{}
	}
	if l.subs[key] == nil {
		l.subs[key] = map[*watcher]struct{}{}
	}
	l.subs[key][w] = struct{}{}
	l.mu.Unlock()
	l.n.Add(1)
	var once sync.Once
	return orchestrator.Live{Deltas: w.deltas, Changed: w.changed, Stop: func() {
		once.Do(func() {
			l.mu.Lock()
			delete(l.subs[key], w)
			if len(l.subs[key]) == 0 {
				delete(l.subs, key)
			}
			l.mu.Unlock()
			l.n.Add(-1)
		})
	}}
}

// each calls f with every watcher of the run, under the lock.
func (l *live) each(tenant, id string, f func(*watcher)) {
	if l.n.Load() == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for w := range l.subs[liveKey(tenant, id)] {
		f(w)
	}
}

// delta sends a piece of step text to the run's watchers: after the stored event afterSeq, before the next one.
// A watcher whose buffer is full misses it.
func (l *live) delta(tenant, id, step string, attempt int32, afterSeq int64, text string) {
	if l.n.Load() == 0 {
		return
	}
	ev := &orchestratorv1.WatchRunResponse{Sequence: afterSeq, Time: timestamppb.New(time.Now()), StepId: step,
		Event: &orchestratorv1.WatchRunResponse_AgentTextDelta{AgentTextDelta: &orchestratorv1.AgentTextDelta{Text: text, Attempt: attempt}}}
	l.each(tenant, id, func(w *watcher) {
		select {
		case w.deltas <- ev:
		default:
		}
	})
}

// committed tells the run's watchers that new events are stored.
func (l *live) committed(tenant, id string) {
	l.each(tenant, id, func(w *watcher) {
		select {
		case w.changed <- struct{}{}:
		default:
		}
	})
}

// Follow implements orchestrator.Runs: the live events of run id that this process executes, from now on.
func (e *Engine) Follow(tenant, id string) orchestrator.Live { return e.live.follow(tenant, id) }
