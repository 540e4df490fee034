package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// On two shared cores a throughput ratio is a ratio of CPU spent per
// transaction, so each timed run reports where the machine's CPU went:
// which process, in milliseconds of CPU per transaction. That says what
// a change has to cut, and whether a difference between runs is the
// server or a neighbour.

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100

// cpuSample is CPU seconds used so far, by role, and by the whole machine.
type cpuSample struct {
	machine float64 // CPU seconds the machine ran, its own work only
	steal   float64 // seconds the hypervisor gave to other guests instead
	wall    time.Time
	roles   map[string]float64
}

// sampleCPU reads /proc. PostgreSQL's backends come and go (pgbench
// opens its own and closes them): a backend that exited was reaped by the
// postmaster, whose children's time counts it, so live backends plus the
// postmaster's children's time is the server's whole. The bench's own
// children's time likewise holds pgbench once it has been waited for.
//
// server is the pid of the process under test (0: none); a process the
// sample does not name shows only in the machine's total.
func sampleCPU(server int) cpuSample {
	s := cpuSample{roles: map[string]float64{}, wall: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		// user nice system idle iowait irq softirq steal guest guest_nice;
		// guest time is already in user and nice.
		f := strings.Fields(line)
		for i, v := range f[1:] {
			n, _ := strconv.ParseFloat(v, 64)
			switch i {
			case 0, 1, 2, 5, 6:
				s.machine += n / clockTicks
			case 7:
				s.steal += n / clockTicks
			}
		}
	}
	self := os.Getpid()
	type proc struct {
		ppid          int
		own, children float64
	}
	postgres := map[int]proc{}
	pids, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range pids {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		pid, comm, f, ok := parseStat(string(b))
		if !ok {
			continue
		}
		own, children := f[11]+f[12], f[13]+f[14] // utime stime cutime cstime (fields 14-17)
		switch {
		case pid == server:
			s.roles["server"] += own
		case pid == self:
			s.roles["load generator"] += own + children
		case comm == "postgres":
			postgres[pid] = proc{int(f[1]), own, children}
		case comm == "redis-server":
			s.roles["redis"] += own
		}
	}
	for _, p := range postgres {
		s.roles["postgres"] += p.own
		if _, backend := postgres[p.ppid]; !backend { // the postmaster
			s.roles["postgres"] += p.children
		}
	}
	for k, v := range s.roles {
		s.roles[k] = v / clockTicks
	}
	return s
}

// parseStat splits /proc/<pid>/stat: the comm sits in parentheses and may
// hold spaces, so fields are counted from its closing one. f[0] is the
// state (field 3 of proc(5)).
func parseStat(line string) (pid int, comm string, f []float64, ok bool) {
	open, close := strings.IndexByte(line, '('), strings.LastIndexByte(line, ')')
	if open < 0 || close < open {
		return 0, "", nil, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line[:open]))
	if err != nil {
		return 0, "", nil, false
	}
	rest := strings.Fields(line[close+1:])
	if len(rest) < 15 {
		return 0, "", nil, false
	}
	f = make([]float64, len(rest))
	for i, v := range rest {
		f[i], _ = strconv.ParseFloat(v, 64)
	}
	return pid, line[open+1 : close], f, true
}

// perTransaction is where the CPU between a and b went, in ms per
// transaction: "machine 1.21 ms = postgres 0.52 + server 0.48 + …".
func perTransaction(a, b cpuSample, txs int) string {
	if txs <= 0 {
		return "no transactions"
	}
	per := func(sec float64) float64 { return 1000 * sec / float64(txs) }
	machine := per(b.machine - a.machine)
	type part struct {
		name string
		ms   float64
	}
	var parts []part
	named := 0.0
	for k, v := range b.roles {
		d := per(v - a.roles[k])
		if d < 0.005 {
			continue
		}
		parts = append(parts, part{k, d})
		named += d
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i].ms > parts[j].ms })
	out := fmt.Sprintf("machine %.2f ms =", machine)
	for i, p := range parts {
		if i > 0 {
			out += " +"
		}
		out += fmt.Sprintf(" %s %.2f", p.name, p.ms)
	}
	out += fmt.Sprintf(" + rest %.2f", machine-named)
	// Time the hypervisor gave other guests: a run with much of it was
	// measured on a machine slower than the others.
	if wall := b.wall.Sub(a.wall).Seconds(); wall > 0 {
		out += fmt.Sprintf("; steal %.0f%% of the machine", 100*(b.steal-a.steal)/(float64(runtime.NumCPU())*wall))
	}
	return out
}

// profiling starts a CPU profile of the server for the next d when
// -profile is set, written to <prefix>-<name>.pprof; wait for it with the
// returned function.
func (e *env) profiling(name string, d time.Duration) (wait func()) {
	if e.o.profile == "" || e.pprofAddr == "" {
		return func() {}
	}
	file := fmt.Sprintf("%s-%s.pprof", e.o.profile, name)
	done := make(chan struct{})
	go func() {
		defer close(done)
		res, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", e.pprofAddr, max(int(d.Seconds()), 1)))
		if err != nil {
			step("profile: %v", err)
			return
		}
		defer res.Body.Close()
		f, err := os.Create(file)
		if err == nil {
			_, err = io.Copy(f, res.Body)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil || res.StatusCode != 200 {
			step("profile: %d %v", res.StatusCode, err)
			return
		}
		step("profile of the server written to %s", file)
	}()
	return func() { <-done }
}
