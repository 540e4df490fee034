package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// httpRun is one vegeta attack and what came back.
type httpRun struct {
	name  string
	rate  int // 0: as fast as the workers go
	m     vegeta.Metrics
	wrong int // answered, but not what the scenario expects (status or body)
	first string
	cpu   string // where the machine's CPU went, per good answer
}

// maxRun is a max-rate attack on the process pid, with its CPU
// accounting and, when profile names the scenario, the server's CPU
// profile (-profile).
func (e *env) maxRun(name string, pid int, tr vegeta.Targeter, ok func(*vegeta.Result) bool, profile string) httpRun {
	profiled := func() {}
	if profile != "" {
		profiled = e.profiling(profile, e.o.duration-time.Second)
	}
	before := sampleCPU(pid)
	r := attack(name, tr, 0, e.o.clients, e.o.duration, ok)
	r.cpu = perTransaction(before, sampleCPU(pid), r.good())
	profiled()
	return r
}

// cpuLines lists the runs' CPU accounting under their table.
func cpuLines(rs []httpRun) string {
	out := "\nCPU per good answer (all processes on the machine; `server` is the process answering):\n"
	for _, r := range rs {
		if r.cpu != "" {
			out += fmt.Sprintf("\n- %s: %s", r.name, r.cpu)
		}
	}
	return out
}

// attack runs tr at rate (0: max rate with workers workers) for d, and
// checks every answer with ok.
func attack(name string, tr vegeta.Targeter, rate, workers int, d time.Duration, ok func(*vegeta.Result) bool) httpRun {
	opts := []func(*vegeta.Attacker){vegeta.KeepAlive(true), vegeta.Timeout(10 * time.Second), vegeta.Connections(64)}
	pacer := vegeta.ConstantPacer{Freq: rate, Per: time.Second}
	if rate == 0 {
		opts = append(opts, vegeta.Workers(uint64(workers)), vegeta.MaxWorkers(uint64(workers)))
	} else {
		opts = append(opts, vegeta.Workers(uint64(workers)))
	}
	atk := vegeta.NewAttacker(opts...)
	r := httpRun{name: name, rate: rate}
	for res := range atk.Attack(tr, pacer, d, name) {
		r.m.Add(res)
		if res.Error == "" && !ok(res) {
			r.wrong++
			if r.first == "" {
				r.first = fmt.Sprintf("%d %s", res.Code, truncate(string(res.Body), 300))
			}
		}
		res.Body = nil
	}
	r.m.Close()
	if len(r.m.Errors) > 0 && r.first == "" {
		r.first = r.m.Errors[0]
	}
	return r
}

// good is the number of answers that were what the scenario wants.
func (r httpRun) good() int { return int(float64(r.m.Requests)*r.m.Success+0.5) - r.wrong }

// goodPerSecond is their rate.
func (r httpRun) goodPerSecond() float64 {
	if r.m.Duration+r.m.Wait <= 0 {
		return 0
	}
	return float64(r.good()) / (r.m.Duration + r.m.Wait).Seconds()
}

func (r httpRun) line() string {
	target := "max"
	if r.rate > 0 {
		target = fmt.Sprintf("%d/s", r.rate)
	}
	s := fmt.Sprintf("| %s | %s | %d | %.0f/s | %.1f%% | %s | %s | %s | %s |", r.name, target, r.m.Requests, r.goodPerSecond(),
		100*(r.m.Success-float64(r.wrong)/float64(max(r.m.Requests, 1))), ms(r.m.Latencies.P50), ms(r.m.Latencies.P95), ms(r.m.Latencies.P99), ms(r.m.Latencies.Max))
	if r.first != "" {
		s += "\n\n  first unexpected answer: " + r.first + "\n"
	}
	return s
}

const httpHeader = "| run | rate | requests | good answers | success | p50 | p95 | p99 | max |\n|---|---|---|---|---|---|---|---|---|"

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// pgbenchRun is one pgbench run.
type pgbenchRun struct {
	tps     float64
	latency float64 // average, ms
	failed  int
	txs     int
	cpu     string // where the machine's CPU went, per transaction
}

var (
	reTPS     = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	reLatency = regexp.MustCompile(`latency average = ([0-9.]+) ms`)
	reFailed  = regexp.MustCompile(`number of failed transactions: ([0-9]+)`)
	reTxs     = regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
)

// pgbench runs the scripts (chosen at random per transaction, as pgbench
// does with several -f) as the application role.
func (e *env) pgbench(scripts []string, clients int, d time.Duration, extra ...string) (r pgbenchRun, err error) {
	args := append([]string{"-n", "-M", "prepared", "-c", strconv.Itoa(clients), "-j", "2", "-T", strconv.Itoa(int(d.Seconds()))}, extra...)
	for _, s := range scripts {
		args = append(args, "-f", s)
	}
	args = append(args, e.pgbenchConn()...)
	before := sampleCPU(0)
	defer func() {
		if r.txs > 0 {
			r.cpu = perTransaction(before, sampleCPU(0), r.txs)
		}
	}()
	cmd := exec.Command("pgbench", args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, io.MultiWriter(&out, errorsOnly{})
	if err := cmd.Run(); err != nil {
		return pgbenchRun{}, fmt.Errorf("pgbench: %w\n%s", err, truncate(out.String(), 4000))
	}
	text := out.String()
	m := reTPS.FindStringSubmatch(text)
	if m == nil {
		return r, fmt.Errorf("pgbench: no tps in its output:\n%s", text)
	}
	r.tps, _ = strconv.ParseFloat(m[1], 64)
	if m := reLatency.FindStringSubmatch(text); m != nil {
		r.latency, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := reFailed.FindStringSubmatch(text); m != nil {
		r.failed, _ = strconv.Atoi(m[1])
	}
	if m := reTxs.FindStringSubmatch(text); m != nil {
		r.txs, _ = strconv.Atoi(m[1])
	}
	if r.failed > 0 {
		return r, fmt.Errorf("pgbench: %d failed transactions:\n%s", r.failed, text)
	}
	return r, nil
}

// errorsOnly passes pgbench's stderr lines that are errors to the terminal.
type errorsOnly struct{}

func (errorsOnly) Write(p []byte) (int, error) {
	for _, l := range strings.Split(string(p), "\n") {
		if strings.Contains(l, "ERROR") || strings.Contains(l, "aborted") {
			fmt.Fprintln(os.Stderr, "pgbench:", l)
		}
	}
	return len(p), nil
}

// section is one scenario's report.
type section struct {
	title    string
	lines    []string
	verdicts []verdict
}

type verdict struct {
	what, measured, target string
	pass                   bool
}

func (s *section) add(format string, args ...any) {
	s.lines = append(s.lines, fmt.Sprintf(format, args...))
}

func (s *section) judge(what, measured, target string, pass bool) {
	s.verdicts = append(s.verdicts, verdict{what, measured, target, pass})
}

func (s section) print(w io.Writer) {
	fmt.Fprintf(w, "\n## %s\n\n", s.title)
	for _, l := range s.lines {
		fmt.Fprintln(w, l)
	}
	fmt.Fprintln(w)
	s.printVerdicts(w)
}

func (s section) printVerdicts(w io.Writer) {
	for _, v := range s.verdicts {
		mark := "PASS"
		if !v.pass {
			mark = "MISS"
		}
		fmt.Fprintf(w, "- %s %s: %s (target %s)\n", mark, v.what, v.measured, v.target)
	}
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	t := 0.0
	for _, x := range xs {
		t += x
	}
	return t / float64(len(xs))
}

func worst(ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] > ds[j] })
	if len(ds) == 0 {
		return 0
	}
	return ds[0]
}

// pgbenchRate runs scripts at a fixed rate (pgbench -R) with 16 clients,
// vegeta's starting workers, and returns the run and its latency
// percentiles from pgbench's per-transaction log, past its warm-up
// (steady). With -R pgbench measures each transaction from its scheduled
// start, as vegeta does a request, so a stall shows in both the same way:
// the ceiling of a p99 target.
func (e *env) pgbenchRate(scripts []string, rate int) (pgbenchRun, latencies, error) {
	dir, err := os.MkdirTemp(e.dir, "pgbench-log-")
	if err != nil {
		return pgbenchRun{}, latencies{}, err
	}
	defer os.RemoveAll(dir)
	prefix := filepath.Join(dir, "tx")
	r, err := e.pgbench(scripts, 16, e.o.duration+pgbenchWarmUp, "-R", strconv.Itoa(rate), "--log", "--log-prefix", prefix)
	if err != nil {
		return r, latencies{}, err
	}
	files, err := filepath.Glob(prefix + ".*")
	if err != nil || len(files) == 0 {
		return r, latencies{}, fmt.Errorf("pgbench wrote no log under %s: %v", dir, err)
	}
	var txs []loggedTx
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return r, latencies{}, err
		}
		txs = append(txs, logLatencies(string(b))...)
	}
	return r, percentiles(steady(txs, pgbenchWarmUp)), nil
}

// loggedTx is a line of pgbench's transaction log.
type loggedTx struct {
	end     time.Time
	latency time.Duration
}

// logLatencies reads a pgbench transaction log, whose lines are
// "client_id transaction_no time script_no time_epoch time_us
// [schedule_lag]", time in microseconds (-1 for a skipped transaction).
func logLatencies(log string) []loggedTx {
	var txs []loggedTx
	for _, line := range strings.Split(log, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 6 {
			continue
		}
		us, err1 := strconv.ParseFloat(fields[2], 64)
		sec, err2 := strconv.ParseInt(fields[4], 10, 64)
		usec, err3 := strconv.ParseInt(fields[5], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || us < 0 {
			continue
		}
		txs = append(txs, loggedTx{end: time.Unix(sec, usec*1000), latency: time.Duration(us * float64(time.Microsecond))})
	}
	return txs
}

// pgbenchWarmUp is how much longer than the other runs a fixed-rate
// pgbench run lasts, and what of its head is left out (steady): its 16
// new connections each build their caches and prepare the 32 scripts'
// statements as they first run them, which here put a backlog of up to a
// second on the first 4–5 s of a run. The server it is compared with runs
// on a pool warmed at the same rate first.
const pgbenchWarmUp = 5 * time.Second

// steady leaves out the transactions that ended in the run's first skip.
func steady(txs []loggedTx, skip time.Duration) []time.Duration {
	if len(txs) == 0 {
		return nil
	}
	first := txs[0].end
	for _, t := range txs {
		if t.end.Before(first) {
			first = t.end
		}
	}
	var ds []time.Duration
	for _, t := range txs {
		if t.end.Sub(first) >= skip {
			ds = append(ds, t.latency)
		}
	}
	return ds
}

// latencies are a run's percentiles.
type latencies struct{ p50, p99, max time.Duration }

func percentiles(ds []time.Duration) latencies {
	if len(ds) == 0 {
		return latencies{}
	}
	slices.Sort(ds)
	at := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	return latencies{p50: at(0.50), p99: at(0.99), max: ds[len(ds)-1]}
}
