// Package providerpb holds the generated gRPC code for provider.proto, the
// wire contract between the keyrelay plugin host and provider plugins.
//
// Regenerate after editing provider.proto (nothing here is edited by hand):
//
//	npm install --prefix /tmp/buf @bufbuild/buf
//	GOBIN=/tmp/gobin go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	GOBIN=/tmp/gobin go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
//	PATH=/tmp/gobin:/tmp/buf/node_modules/.bin:$PATH go generate ./plugins/sdk/providerpb
package providerpb

//go:generate buf generate
