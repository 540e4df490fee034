package jobs

import (
	"testing"

	"github.com/google/uuid"
)

func TestDeliverBatchTaskID(t *testing.T) {
	tenant := uuid.New()
	a, b, c := Ref{ID: uuid.New()}, Ref{ID: uuid.New()}, Ref{ID: uuid.New()}
	id := DeliverBatch{TenantID: tenant, Messages: []Ref{a, b}}.TaskID()
	for _, tc := range []struct {
		name string
		b    DeliverBatch
		same bool
	}{
		{"OKSameGroupingAnyOrder", DeliverBatch{TenantID: tenant, Messages: []Ref{b, a}}, true},
		{"OtherGrouping", DeliverBatch{TenantID: tenant, Messages: []Ref{a, b, c}}, false},
		{"OtherRevision", DeliverBatch{TenantID: tenant, Messages: []Ref{a, {ID: b.ID, Rev: 1}}}, false},
		{"OtherTenant", DeliverBatch{TenantID: uuid.New(), Messages: []Ref{a, b}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.b.TaskID(); (got == id) != tc.same {
				t.Errorf("task id %s vs %s, same = %v", got, id, got == id)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	b := DeliverBatch{TenantID: uuid.New(), Messages: []Ref{{ID: uuid.New(), Rev: 3}}}
	got, err := DecodeDeliverBatch(b.Encode())
	if err != nil || got.TenantID != b.TenantID || len(got.Messages) != 1 || got.Messages[0] != b.Messages[0] {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, bad := range []string{`{}`, `{"tenant_id":"` + b.TenantID.String() + `","messages":[]}`, `{"tenant_id":"` + b.TenantID.String() + `","messages":[{}]}`, `[`} {
		if _, err := DecodeDeliverBatch([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	d := Deliver{TenantID: b.TenantID, MessageID: uuid.New(), Rev: 2}
	retry := d
	retry.Attempts = 1
	if d.TaskID() == retry.TaskID() {
		t.Error("a retry has the task id of the message's first task")
	}
}
