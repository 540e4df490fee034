package outbox

import (
	"bytes"
	"testing"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants/secretbox"
)

// A purged message (retention, erasure) still reads as a delivery record,
// without content; a damaged one is still an error.
func TestOpenPurged(t *testing.T) {
	box, err := secretbox.New(bytes.Repeat([]byte{1}, secretbox.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	o := New(box)
	r := record{ID: uuid.New(), TenantID: uuid.New(), Kind: "access_instructions", Status: "delivered", Recipient: "purged"}
	row, err := o.open(r)
	if err != nil || row.Data != nil || row.Status != Delivered {
		t.Fatalf("purged row: %+v, %v", row, err)
	}
	r.Payload = []byte("not sealed")
	if _, err := o.open(r); err == nil {
		t.Error("a damaged payload opened")
	}
}
