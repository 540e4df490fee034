package sdk_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/plugins/sdk"
	"github.com/keyrelay/keyrelay/plugins/sdk/sdktest"
)

// scripted is a provider whose Send does what the message text says, so one
// provider covers every way a call can end.
type scripted struct {
	mu   sync.Mutex
	sent map[string]string // message id → provider id
}

func (p *scripted) Capabilities(context.Context) (sdk.Capabilities, error) {
	return sdk.Capabilities{Name: "scripted", Channels: []sdk.Channel{sdk.ChannelSMS}}, nil
}

func (p *scripted) CheckConfig(_ context.Context, s map[string]string) error {
	if s["token"] == "" {
		return sdk.Permanent(errors.New("token is required"))
	}
	return nil
}

func (p *scripted) Send(ctx context.Context, msg sdk.Message) (sdk.Receipt, error) {
	switch msg.Text {
	case "temporary":
		return sdk.Receipt{}, sdk.Temporary(errors.New("gateway busy"))
	case "permanent":
		return sdk.Receipt{}, sdk.Permanent(errors.New("number blocked"))
	case "ratelimited":
		return sdk.Receipt{}, sdk.RateLimited(7*time.Second, errors.New("slow down"))
	case "unclassified":
		return sdk.Receipt{}, errors.New("something odd")
	case "panic":
		panic("provider bug")
	case "bad-status":
		return sdk.Receipt{ProviderMessageID: "x", Status: sdk.StatusFailed}, nil
	case "wait":
		<-ctx.Done()
		return sdk.Receipt{}, ctx.Err()
	case "hang":
		time.Sleep(2 * time.Second)
		return sdk.Receipt{}, errors.New("too late")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sent == nil {
		p.sent = map[string]string{}
	}
	id, ok := p.sent[msg.MessageID]
	if !ok {
		id = "prov-" + msg.MessageID
		p.sent[msg.MessageID] = id
	}
	return sdk.Receipt{ProviderMessageID: id, Status: sdk.StatusSent}, nil
}

func (p *scripted) VerifyReceipt(_ context.Context, s map[string]string, req sdk.InboundRequest) (sdk.ReceiptUpdate, error) {
	if req.Header.Get("X-Token") != s["token"] {
		return sdk.ReceiptUpdate{}, sdk.Permanent(errors.New("bad signature"))
	}
	return sdk.ReceiptUpdate{ProviderMessageID: string(req.Body), Status: sdk.StatusDelivered}, nil
}

func TestConformanceKitPassesAGoodProvider(t *testing.T) {
	settings := map[string]string{"token": "s3cret-token"}
	sdktest.Run(t, &scripted{}, sdktest.Options{
		ValidSettings:   settings,
		InvalidSettings: []map[string]string{{}, {"token": ""}},
		SecretKeys:      []string{"token"},
		Idempotent:      true,
		Errors: []sdktest.ErrorCase{
			{Name: "Temporary", Message: sdk.Message{Text: "temporary"}, Class: sdk.ClassTemporary},
			{Name: "Permanent", Message: sdk.Message{Text: "permanent"}, Class: sdk.ClassPermanent},
			{Name: "RateLimited", Message: sdk.Message{Text: "ratelimited"}, Class: sdk.ClassRateLimited, RetryAfter: 7 * time.Second},
		},
		Receipts: []sdktest.ReceiptCase{
			{
				Name:    "OK",
				Request: sdk.InboundRequest{Method: "POST", Header: http.Header{"X-Token": {"s3cret-token"}}, Body: []byte("prov-1")},
				Want:    sdk.ReceiptUpdate{ProviderMessageID: "prov-1", Status: sdk.StatusDelivered},
			},
			{
				Name:    "ErrBadSignature",
				Request: sdk.InboundRequest{Method: "POST", Header: http.Header{"X-Token": {"forged"}}, Body: []byte("prov-1")},
				Class:   sdk.ClassPermanent,
			},
		},
	})
}

func TestWireErrors(t *testing.T) {
	c := sdktest.Connect(t, &scripted{})
	send := func(t *testing.T, text string, timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		_, err := c.Send(ctx, sdk.Message{MessageID: sdktest.NewMessageID(), Channel: sdk.ChannelSMS, To: "+15555550100", Text: text})
		return err
	}
	tests := []struct {
		text  string
		class sdk.Class
		is    []error
		not   []error
	}{
		{"temporary", sdk.ClassTemporary, []error{sdk.ErrTemporary}, []error{sdk.ErrTransport}},
		{"permanent", sdk.ClassPermanent, []error{sdk.ErrPermanent}, nil},
		{"ratelimited", sdk.ClassRateLimited, []error{sdk.ErrRateLimited, sdk.ErrTemporary}, nil},
		{"unclassified", sdk.ClassTemporary, []error{sdk.ErrTemporary}, nil},
		{"panic", sdk.ClassPermanent, []error{sdk.ErrPermanent}, nil},
		{"bad-status", sdk.ClassPermanent, []error{sdk.ErrPermanent, sdk.ErrProtocol}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.text, func(t *testing.T) {
			err := send(t, tc.text, 5*time.Second)
			if got := sdk.ClassOf(err); got != tc.class {
				t.Fatalf("Send: %v: class %v, want %v", err, got, tc.class)
			}
			for _, target := range tc.is {
				if !errors.Is(err, target) {
					t.Errorf("errors.Is(%v, %v) = false", err, target)
				}
			}
			for _, target := range tc.not {
				if errors.Is(err, target) {
					t.Errorf("errors.Is(%v, %v) = true", err, target)
				}
			}
		})
	}

	t.Run("RetryAfterSurvives", func(t *testing.T) {
		var e *sdk.Error
		if err := send(t, "ratelimited", 5*time.Second); !errors.As(err, &e) || e.RetryAfter != 7*time.Second {
			t.Fatalf("Send: %v: want RetryAfter 7s", err)
		}
	})

	t.Run("ProviderHonoursDeadline", func(t *testing.T) {
		err := send(t, "wait", 200*time.Millisecond)
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, sdk.ErrTemporary) {
			t.Fatalf("Send: %v: want a temporary deadline error", err)
		}
	})

	t.Run("UnsupportedChannel", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		_, err := c.Send(ctx, sdk.Message{MessageID: "m1", Channel: sdk.ChannelEmail, To: "a@example.com"})
		if !errors.Is(err, sdk.ErrPermanent) || !errors.Is(err, sdk.ErrUnsupportedChannel) {
			t.Fatalf("Send on email: %v: want permanent ErrUnsupportedChannel", err)
		}
	})

	t.Run("InvalidUTF8RefusedBeforeTheWire", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		_, err := c.Send(ctx, sdk.Message{MessageID: "m1", Channel: sdk.ChannelSMS, To: "+1", Text: "\xff"})
		if !errors.Is(err, sdk.ErrInvalidMessage) || !errors.Is(err, sdk.ErrPermanent) {
			t.Fatalf("Send: %v: want permanent invalid message", err)
		}
	})
}

// A provider that ignores its deadline shows up in Health, which is how the
// host tells it from one that is merely slow.
func TestHealthReportsOverdueCalls(t *testing.T) {
	c := sdktest.Connect(t, &scripted{})
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := c.Send(ctx, sdk.Message{MessageID: "m", Channel: sdk.ChannelSMS, To: "+1", Text: "hang"})
		done <- err
	}()
	err := <-done
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, sdk.ErrTransport) {
		t.Fatalf("Send: %v: want a transport deadline error (no answer in time)", err)
	}
	time.Sleep(200 * time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	h, err := c.Health(ctx)
	if err != nil {
		t.Fatalf("Health: %v", err)
	}
	if h.InFlight != 1 || h.MaxOverdue < 150*time.Millisecond {
		t.Fatalf("Health = %+v, want one call overdue by at least 150ms", h)
	}
}
