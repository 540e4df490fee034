// Command faulty is a provider plugin that misbehaves on request, for the
// host's tests. The message text says what it does:
//
//	crash          exit in the middle of the call
//	hang           never return, ignoring the deadline
//	slow           wait for the deadline, then return its error
//	garbage        answer a receipt with a status that does not exist
//	garbage-error  fail without any error class
//	temporary, permanent, ratelimited
//	               fail with that class
//
// Anything else succeeds, with "<pid>/<message id>" as the provider's
// message id, so tests know which process served them.
//
// It assembles its go-plugin server itself instead of calling sdk.Serve, to
// put a layer that can send garbage in front of the SDK's gRPC server.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyrelay/keyrelay/plugins/sdk"
	"github.com/keyrelay/keyrelay/plugins/sdk/providerpb"
)

type provider struct{}

func (provider) Capabilities(context.Context) (sdk.Capabilities, error) {
	return sdk.Capabilities{Name: "faulty", Channels: []sdk.Channel{sdk.ChannelSMS, sdk.ChannelEmail}}, nil
}

func (provider) CheckConfig(context.Context, map[string]string) error { return nil }

func (provider) Send(ctx context.Context, msg sdk.Message) (sdk.Receipt, error) {
	switch msg.Text {
	case "crash":
		os.Exit(3)
	case "hang":
		select {}
	case "slow":
		<-ctx.Done()
		return sdk.Receipt{}, ctx.Err()
	case "temporary":
		return sdk.Receipt{}, sdk.Temporary(errors.New("try later"))
	case "permanent":
		return sdk.Receipt{}, sdk.Permanent(errors.New("never"))
	case "ratelimited":
		return sdk.Receipt{}, sdk.RateLimited(42*time.Second, errors.New("slow down"))
	}
	return sdk.Receipt{ProviderMessageID: fmt.Sprintf("%d/%s", os.Getpid(), msg.MessageID)}, nil
}

// garbling answers some calls with replies the protocol does not allow.
type garbling struct {
	*sdk.GRPCServer
}

func (g garbling) Send(ctx context.Context, req *providerpb.SendRequest) (*providerpb.SendResponse, error) {
	switch req.GetMessage().GetText() {
	case "garbage":
		return &providerpb.SendResponse{ProviderMessageId: "?", Status: providerpb.Status(42)}, nil
	case "garbage-error":
		return nil, status.Error(codes.Unknown, "\x00garbage")
	}
	return g.GRPCServer.Send(ctx, req)
}

type faultyPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (faultyPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	providerpb.RegisterProviderServer(s, garbling{sdk.NewGRPCServer(provider{})})
	return nil
}

func (faultyPlugin) GRPCClient(context.Context, *plugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	return nil, errors.New("faulty: server side only")
}

func main() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{sdk.ProtocolVersion: {sdk.PluginName: faultyPlugin{}}},
		GRPCServer:       plugin.DefaultGRPCServer,
	})
}
