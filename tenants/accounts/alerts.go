package accounts

import (
	"context"
	"fmt"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// AlertAdmins emails a notice to the tenant's active owners and admins, in
// each one's language: the tenant-side alerts of boxes and key exchange
// (a box cooling down, a locked booking, an inventory mismatch, a box
// offline or on battery). ctx carries the tenant transaction, so the
// alerts commit with what caused them.
func (s *Service) AlertAdmins(ctx context.Context, kind string, data map[string]string) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	var us []User
	if err := tx.Where("role IN ('owner', 'admin') AND disabled_at IS NULL").Order("id").Find(&us).Error; err != nil {
		return fmt.Errorf("accounts: find admins: %w", err)
	}
	for _, u := range us {
		if _, err := s.msgs.Add(ctx, outbox.Message{Kind: kind, Channel: outbox.Email, Recipient: u.Email, Language: u.language(), Data: data}); err != nil {
			return err
		}
	}
	return nil
}
