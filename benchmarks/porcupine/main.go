// Command porcupine-driver checks a history file with Porcupine, for the side-by-side
// benchmark in benchmarks/results/checker-vs-porcupine.md. It is built against a fetched
// copy of Porcupine (see run.sh); no Porcupine code lives in this repository.
//
// Formats (the ones `kvstore jepsen check` reads): Jepsen etcd logs (one cas register) and
// EDN-like kv maps (a string register per key, get/put/append). An operation whose outcome
// is unknown (:info, or no completion at all) returns at the end of the history and is legal
// in every state: only its effect, if it had one, counts.
//
// Output, one line: "<file>\t<verdict>\t<seconds>" with verdict linearizable,
// not-linearizable or unknown (the -timeout ran out). With -per-key, one line per key too.
package main

import (
	"bufio"
	"flag"
	"hash/fnv"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

type kvIn struct {
	op    byte // 'g', 'p', 'a'
	key   string
	value string
}

type kvOut struct {
	value   string
	unknown bool
}

type regIn struct {
	op       byte // 'r', 'w', 'c'
	from, to int
	hasFrom  bool
}

type regOut struct {
	value   int
	present bool
	ok      bool
	unknown bool
}

var kvModel = porcupine.Model{
	PartitionEvent: func(history []porcupine.Event) [][]porcupine.Event {
		byKey := map[string][]porcupine.Event{}
		keyOf := map[int]string{}
		var keys []string
		for _, e := range history {
			if e.Kind == porcupine.CallEvent {
				k := e.Value.(kvIn).key
				keyOf[e.Id] = k
				if _, seen := byKey[k]; !seen {
					keys = append(keys, k)
				}
			}
			k := keyOf[e.Id]
			byKey[k] = append(byKey[k], e)
		}
		out := make([][]porcupine.Event, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() interface{} { return "" },
	Step: func(state, input, output interface{}) (bool, interface{}) {
		s := state.(string)
		in := input.(kvIn)
		out := output.(kvOut)
		switch in.op {
		case 'g':
			return out.unknown || out.value == s, s
		case 'p':
			return true, in.value
		default:
			return true, s + in.value
		}
	},
	Equal: func(a, b interface{}) bool { return a.(string) == b.(string) },
	Hash: func(state interface{}) uint64 {
		h := fnv.New64a()
		h.Write([]byte(state.(string)))
		return h.Sum64()
	},
}

// register state: -1 means absent (the etcd logs only write small non-negative ints)
var regModel = porcupine.Model{
	Init: func() interface{} { return -1 },
	Hash: func(state interface{}) uint64 { return uint64(state.(int)) * 0x9E3779B97F4A7C15 },
	Step: func(state, input, output interface{}) (bool, interface{}) {
		s := state.(int)
		in := input.(regIn)
		out := output.(regOut)
		switch in.op {
		case 'r':
			if out.unknown {
				return true, s
			}
			if !out.present {
				return s == -1, s
			}
			return s == out.value, s
		case 'w':
			return true, in.to
		default:
			matches := s == in.from
			next := s
			if matches {
				next = in.to
			}
			if out.unknown {
				return true, next
			}
			return out.ok == matches, next
		}
	},
}

var (
	kvField = regexp.MustCompile(`:(\w+)\s+("(?:[^"\\]|\\.)*"|[^,}\s]+)`)
	logLine = regexp.MustCompile(`jepsen\.util\s+-\s+(\d+)\s+:(invoke|ok|fail|info)\s+:(read|write|cas)\s+(.*?)\s*$`)
)

type builder struct {
	events  []porcupine.Event
	pending map[int]int // process -> id of its operation in flight
	unknown map[int]interface{}
	nextID  int
}

func (b *builder) call(proc int, v interface{}, unknownOut interface{}) {
	b.events = append(b.events, porcupine.Event{ClientId: proc, Kind: porcupine.CallEvent, Value: v, Id: b.nextID})
	b.pending[proc] = b.nextID
	b.unknown[b.nextID] = unknownOut
	b.nextID++
}

func (b *builder) ret(proc int, v interface{}) {
	id, ok := b.pending[proc]
	if !ok {
		fmt.Fprintf(os.Stderr, "process %d completes without an invoke\n", proc)
		os.Exit(2)
	}
	delete(b.pending, proc)
	b.events = append(b.events, porcupine.Event{ClientId: proc, Kind: porcupine.ReturnEvent, Value: v, Id: id})
}

// drop removes a call that certainly did not happen (a :fail that is not a cas).
func (b *builder) drop(proc int) {
	id := b.pending[proc]
	delete(b.pending, proc)
	for i := len(b.events) - 1; i >= 0; i-- {
		if b.events[i].Id == id && b.events[i].Kind == porcupine.CallEvent {
			b.events = append(b.events[:i], b.events[i+1:]...)
			return
		}
	}
}

func (b *builder) finish() []porcupine.Event {
	ids := make([]int, 0, len(b.pending))
	procOf := map[int]int{}
	for proc, id := range b.pending {
		ids = append(ids, id)
		procOf[id] = proc
	}
	sort.Ints(ids)
	for _, id := range ids {
		b.events = append(b.events, porcupine.Event{ClientId: procOf[id], Kind: porcupine.ReturnEvent, Value: b.unknown[id], Id: id})
	}
	return b.events
}

func parse(lines []string) ([]porcupine.Event, porcupine.Model) {
	b := &builder{pending: map[int]int{}, unknown: map[int]interface{}{}}
	isLog := false
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			isLog = strings.Contains(l, "jepsen.util")
			break
		}
	}
	for n, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		if isLog {
			m := logLine.FindStringSubmatch(l)
			if m == nil {
				fmt.Fprintf(os.Stderr, "line %d: not a Jepsen log line\n", n+1)
				os.Exit(2)
			}
			proc, _ := strconv.Atoi(m[1])
			t, f, raw := m[2], m[3], m[4]
			switch {
			case t == "invoke":
				in := regIn{op: f[0]}
				if f == "write" {
					in.to, _ = strconv.Atoi(raw)
				} else if f == "cas" {
					parts := strings.Fields(strings.Trim(raw, "[]"))
					in.from, _ = strconv.Atoi(parts[0])
					in.to, _ = strconv.Atoi(parts[1])
				}
				b.call(proc, in, regOut{unknown: true})
			case t == "info":
				// unknown outcome: it stays pending and returns at the end
			case t == "fail" && f != "cas":
				b.drop(proc)
			default:
				out := regOut{ok: t == "ok"}
				if f == "read" {
					if raw == "nil" {
						out.present = false
					} else {
						out.value, _ = strconv.Atoi(raw)
						out.present = true
					}
				}
				b.ret(proc, out)
			}
			continue
		}
		fields := map[string]string{}
		for _, m := range kvField.FindAllStringSubmatch(l, -1) {
			fields[m[1]] = m[2]
		}
		proc, err := strconv.Atoi(fields["process"])
		if err != nil {
			fmt.Fprintf(os.Stderr, "line %d: no :process\n", n+1)
			os.Exit(2)
		}
		unquote := func(s string) string {
			if s == "nil" {
				return ""
			}
			u, err := strconv.Unquote(s)
			if err != nil {
				return s
			}
			return u
		}
		switch fields["type"] {
		case ":invoke":
			in := kvIn{op: fields["f"][1], key: unquote(fields["key"]), value: unquote(fields["value"])}
			b.call(proc, in, kvOut{unknown: true})
		case ":ok":
			b.ret(proc, kvOut{value: unquote(fields["value"])})
		case ":fail":
			b.drop(proc)
		}
	}
	if isLog {
		return b.finish(), regModel
	}
	return b.finish(), kvModel
}

func verdict(r porcupine.CheckResult) string {
	switch r {
	case porcupine.Ok:
		return "linearizable"
	case porcupine.Illegal:
		return "not-linearizable"
	}
	return "unknown"
}

func main() {
	timeout := flag.Duration("timeout", 0, "give up after this long (0: never)")
	perKey := flag.Bool("per-key", false, "also check each key on its own and print its time")
	flag.Parse()
	for _, path := range flag.Args() {
		data, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		var lines []string
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		sc.Buffer(make([]byte, 1<<20), 1<<26)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		events, model := parse(lines)
		t0 := time.Now()
		res := porcupine.CheckEventsTimeout(model, events, *timeout)
		fmt.Printf("%s\t%s\t%.4f\n", path, verdict(res), time.Since(t0).Seconds())
		if *perKey && model.PartitionEvent != nil {
			single := model
			single.PartitionEvent = nil
			for _, part := range model.PartitionEvent(events) {
				k := part[0].Value.(kvIn).key
				t1 := time.Now()
				r := porcupine.CheckEventsTimeout(single, part, *timeout)
				fmt.Printf("  key %s\t%s\t%.4f\t%d ops\n", k, verdict(r), time.Since(t1).Seconds(), len(part)/2)
			}
		}
	}
}
