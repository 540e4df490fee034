package sdk

import (
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
)

// Serve runs p as a keyrelay provider plugin. Call it from main; it returns
// when the host closes the plugin.
//
// It also sets slog's default logger to one the host understands: log with
// slog and the lines reach the host's log with their level, tagged with the
// plugin's name. Never log settings or message bodies: settings hold secrets
// and bodies hold access codes.
//
// The plugin exits by itself when the host process disappears, even if the
// host was killed without a chance to stop it.
func Serve(p Provider) {
	// go-plugin points os.Stderr elsewhere once it serves; the host reads the
	// original one, so capture it now.
	stderr := os.Stderr
	slog.SetDefault(slog.New(NewLogHandler(stderr, slog.LevelInfo)))

	go watchHost(os.Getppid(), hostWatchInterval, func() {
		slog.Error("host process is gone; exiting")
		os.Exit(1)
	})

	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: PluginSets(p),
		GRPCServer:       plugin.DefaultGRPCServer,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:       "go-plugin",
			Output:     stderr,
			JSONFormat: true,
			Level:      hclog.Info,
		}),
	})
}

// hostWatchInterval trades how long a plugin outlives a killed host against
// a syscall per tick; the host's own safeguard (a parent-death signal on
// Linux) usually acts first.
const hostWatchInterval = 500 * time.Millisecond

// watchHost calls gone once the process that started this one has exited.
// When a parent dies its children are re-parented (to init or a subreaper),
// so a changed parent pid is the portable sign. go-plugin itself does not
// notice: the plugin reads nothing from the host once it has handed over its
// address, and would otherwise live on as an orphan.
func watchHost(ppid int, every time.Duration, gone func()) {
	if ppid <= 1 {
		// Started by init: there is no host process to outlive.
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for range t.C {
		if os.Getppid() != ppid {
			gone()
			return
		}
	}
}

// NewLogHandler returns a slog handler writing JSON lines in the shape
// go-plugin's host parses from a plugin's stderr (hclog's @level, @message,
// @timestamp), so levels and attributes survive into the host's log.
func NewLogHandler(w io.Writer, level slog.Leveler) slog.Handler {
	return slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.TimeKey:
				return slog.String("@timestamp", a.Value.Time().Format("2006-01-02T15:04:05.000000Z07:00"))
			case slog.LevelKey:
				lvl, _ := a.Value.Any().(slog.Level)
				name := "info"
				switch {
				case lvl < slog.LevelInfo:
					name = "debug"
				case lvl >= slog.LevelError:
					name = "error"
				case lvl >= slog.LevelWarn:
					name = "warn"
				}
				return slog.String("@level", name)
			case slog.MessageKey:
				return slog.String("@message", a.Value.String())
			}
			if strings.HasPrefix(a.Key, "@") {
				// Keep the reserved keys for the envelope.
				a.Key = "_" + a.Key
			}
			return a
		},
	})
}
