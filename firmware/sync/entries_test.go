package boxsync

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/keyrelay/keyrelay/tenants"
)

// decodeEntries reads every entry from the signed message with one
// decoder: a refused entry in the middle must not shift the ones after it.
func TestDecodeEntriesStaysAligned(t *testing.T) {
	events := []json.RawMessage{
		json.RawMessage(`{"seq":1,"prev":"","box_time":"2026-01-01T00:00:00Z","kind":"dropoff","bin":1,"fob_serial":"F1"}`),
		json.RawMessage(`{"seq":2,"extra":{"nested":[1,2,{"seq":99}]},"kind":"dropoff"}`),
		json.RawMessage(`7`),
		json.RawMessage("{\"seq\":4,\n\"prev\":\"x\",\"box_time\":\"2026-01-01T00:00:03Z\",\"kind\":\"pickup\",\"bin\":2,\"fob_serial\":\"F4\",\"method\":\"backup\"}"),
	}
	var v tenants.Validator
	evs := decodeEntries(&v, events, BatchMessage("box", events), 12)
	if evs[0].Seq != 1 || evs[0].FobSerial != "F1" || evs[0].hash != Hash(events[0]) {
		t.Errorf("entry 0: %+v", evs[0])
	}
	if evs[3].Seq != 4 || evs[3].FobSerial != "F4" || evs[3].Bin != 2 || evs[3].hash != Hash(events[3]) {
		t.Errorf("entry 3 after two refused ones: %+v", evs[3])
	}
	err := v.Err()
	if err == nil {
		t.Fatal("no refusal")
	}
	msg := err.Error()
	for _, f := range []string{"events[1]", "events[2]"} {
		if !strings.Contains(msg, f) {
			t.Errorf("%s not refused: %s", f, msg)
		}
	}
	for _, f := range []string{"events[0]", "events[3]"} {
		if strings.Contains(msg, f) {
			t.Errorf("%s refused: %s", f, msg)
		}
	}
}
