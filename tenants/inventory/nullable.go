package inventory

import (
	"encoding/json"
)

// Nullable is a PATCH field that can be cleared: absent leaves the value
// unchanged, null clears it, anything else sets it. (A plain pointer cannot
// tell absent from null.)
type Nullable[T any] struct {
	Set   bool
	Value *T
}

// Null returns a Nullable that clears the field.
func Null[T any]() Nullable[T] { return Nullable[T]{Set: true} }

// Some returns a Nullable that sets the field to v.
func Some[T any](v T) Nullable[T] { return Nullable[T]{Set: true, Value: &v} }

// UnmarshalJSON is called only for a field present in the body, null
// included.
func (n *Nullable[T]) UnmarshalJSON(b []byte) error {
	n.Set = true
	if string(b) == "null" {
		n.Value = nil
		return nil
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	n.Value = &v
	return nil
}

// MarshalJSON writes the value, or null.
func (n Nullable[T]) MarshalJSON() ([]byte, error) {
	if n.Value == nil {
		return []byte("null"), nil
	}
	return json.Marshal(*n.Value)
}

// IsZero makes an absent field disappear under `json:",omitzero"`.
func (n Nullable[T]) IsZero() bool { return !n.Set }
