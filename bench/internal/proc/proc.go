// Package proc reads what the benchmarks measure of processes from /proc: CPU time, and the
// ClickHouse server listening on a port.
package proc

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// CPU is utime + stime of a process in seconds (0 when it is gone).
func CPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// Threads is the CPU seconds of a process's threads, summed by thread name (threads that
// ended are not counted).
func Threads(pid int) map[string]float64 {
	out := map[string]float64{}
	if pid <= 0 {
		return out
	}
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name()))
		if err != nil {
			continue
		}
		s := string(data)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		f := strings.Fields(s[end+2:])
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		out[s[open+1:end]] += (ut + st) / 100
	}
	return out
}

// ClickHouseOn finds a clickhouse-server whose --config-file sets the tcp_port of addr (the
// server may have been started from another checkout's data folder); 0 when none.
func ClickHouseOn(addr string) int {
	_, port, _ := net.SplitHostPort(addr)
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		for _, arg := range strings.Split(string(cmd), "\x00") {
			if file, ok := strings.CutPrefix(arg, "--config-file="); ok && strings.Contains(string(cmd), "clickhouse") {
				if conf, err := os.ReadFile(file); err == nil && strings.Contains(string(conf), "<tcp_port>"+port+"</tcp_port>") {
					return pid
				}
			}
		}
	}
	return 0
}

// LoadAvg is the machine's load average over 1, 5 and 15 minutes.
func LoadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}
