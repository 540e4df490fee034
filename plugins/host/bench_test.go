//go:build unix

package host

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/keyrelay/keyrelay/plugins/providers/devmailbox/devmailbox"
	"github.com/keyrelay/keyrelay/plugins/sdk"
)

// BenchmarkSend compares one Send through the host, over go-plugin's gRPC
// (AutoMTLS on a Unix socket), with a direct call of the same provider in
// this process. The devmailbox pair includes writing the message file; the
// noop pair isolates the cost of the hop.
//
//	go test -run '^$' -bench . ./plugins/host/
func BenchmarkSend(b *testing.B) {
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	message := func(i int, settings map[string]string) sdk.Message {
		return sdk.Message{
			MessageID: "bench-" + strconv.Itoa(i), TenantID: "t", Channel: sdk.ChannelSMS,
			To: "+15555550100", Text: "Your code is 123456", Settings: settings,
		}
	}
	host := func(b *testing.B, name string) *Host {
		cfg := testConfig(b, install(b, name))
		cfg.Logger = quiet
		h, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = h.Close() })
		return h
	}

	b.Run("devmailbox/grpc", func(b *testing.B) {
		h := host(b, "devmailbox")
		settings := map[string]string{devmailbox.SettingDir: b.TempDir()}
		i := 0
		for b.Loop() {
			i++
			if _, err := h.Send(ctx, "devmailbox", message(i, settings)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("devmailbox/inprocess", func(b *testing.B) {
		p := devmailbox.New()
		settings := map[string]string{devmailbox.SettingDir: b.TempDir()}
		i := 0
		for b.Loop() {
			i++
			if _, err := p.Send(ctx, message(i, settings)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("devmailbox/grpc-20-concurrent", func(b *testing.B) {
		h := host(b, "devmailbox")
		settings := map[string]string{devmailbox.SettingDir: b.TempDir()}
		var n atomic.Int64
		// Like the delivery workers: asynq runs 20 at a time by default.
		b.SetParallelism(10)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := int(n.Add(1))
				if _, err := h.Send(ctx, "devmailbox", message(id, settings)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("noop/grpc", func(b *testing.B) {
		h := host(b, "faulty")
		i := 0
		for b.Loop() {
			i++
			if _, err := h.Send(ctx, "faulty", message(i, nil)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("noop/inprocess", func(b *testing.B) {
		var p sdk.Provider = noop{}
		i := 0
		for b.Loop() {
			i++
			if _, err := p.Send(ctx, message(i, nil)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

type noop struct{}

func (noop) Capabilities(context.Context) (sdk.Capabilities, error) {
	return sdk.Capabilities{Name: "noop", Channels: []sdk.Channel{sdk.ChannelSMS}}, nil
}
func (noop) CheckConfig(context.Context, map[string]string) error { return nil }
func (noop) Send(_ context.Context, m sdk.Message) (sdk.Receipt, error) {
	return sdk.Receipt{ProviderMessageID: m.MessageID}, nil
}
