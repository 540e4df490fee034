// Package providers is a tenant's choice of notification provider per
// channel (and a fallback), with the provider's settings. Settings hold API
// keys and passwords: they are sealed at rest, never returned by the API,
// and never logged.
package providers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// Channels a provider can serve.
var Channels = []string{"sms", "email"}

// Choice is the provider that sends on one channel.
type Choice struct {
	Provider string
	Settings map[string]string
}

// Route is what a channel uses: a provider, and optionally a fallback tried
// once when the first fails for good or is unavailable.
type Route struct {
	Channel  string
	Primary  Choice
	Fallback *Choice
	Default  bool // the platform default: the tenant chose nothing
}

// Sealer encrypts settings bound to their tenant and channel.
type Sealer interface {
	Seal(plaintext, context []byte) ([]byte, error)
	Open(sealed, context []byte) ([]byte, error)
}

// Checker asks a provider whether settings are usable.
type Checker interface {
	Known(provider string, channel string) bool
	CheckConfig(ctx context.Context, provider string, settings map[string]string) error
}

// Store reads and writes tenants' routes.
type Store struct {
	sealer   Sealer
	checker  Checker
	defaults map[string]Choice
}

// NewStore returns a store; defaults is the platform's choice per channel.
func NewStore(s Sealer, c Checker, defaults map[string]Choice) *Store {
	return &Store{sealer: s, checker: c, defaults: defaults}
}

type record struct {
	TenantID         uuid.UUID `gorm:"primaryKey"`
	Channel          string    `gorm:"primaryKey"`
	Provider         string
	Settings         []byte
	Fallback         *string
	FallbackSettings []byte
	UpdatedAt        time.Time
}

func (record) TableName() string { return "tenant_providers" }

func sealCtx(tenantID uuid.UUID, channel, which string) []byte {
	return []byte("tenant_providers:" + tenantID.String() + ":" + channel + ":" + which)
}

// Routes returns every channel's route in ctx's tenant, in one query.
func (s *Store) Routes(ctx context.Context) (map[string]Route, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var recs []record
	if err := tx.Find(&recs).Error; err != nil {
		return nil, fmt.Errorf("providers: load: %w", err)
	}
	out := make(map[string]Route, len(Channels))
	for ch, d := range s.defaults {
		out[ch] = Route{Channel: ch, Primary: d, Default: true}
	}
	for _, r := range recs {
		route := Route{Channel: r.Channel, Primary: Choice{Provider: r.Provider}}
		if route.Primary.Settings, err = s.open(r.Settings, sealCtx(r.TenantID, r.Channel, "primary")); err != nil {
			return nil, err
		}
		if r.Fallback != nil {
			fb := Choice{Provider: *r.Fallback}
			if fb.Settings, err = s.open(r.FallbackSettings, sealCtx(r.TenantID, r.Channel, "fallback")); err != nil {
				return nil, err
			}
			route.Fallback = &fb
		}
		out[r.Channel] = route
	}
	return out, nil
}

func (s *Store) open(sealed, ctx []byte) (map[string]string, error) {
	plain, err := s.sealer.Open(sealed, ctx)
	if err != nil {
		return nil, fmt.Errorf("providers: open settings: %w", err)
	}
	var m map[string]string
	if err := json.Unmarshal(plain, &m); err != nil {
		return nil, fmt.Errorf("providers: decode settings: %w", err)
	}
	return m, nil
}

func (s *Store) seal(m map[string]string, ctx []byte) ([]byte, error) {
	if m == nil {
		m = map[string]string{}
	}
	plain, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return s.sealer.Seal(plain, ctx)
}

// ChoiceInput is a provider and its settings as the API receives them.
type ChoiceInput struct {
	Provider string            `json:"provider"`
	Settings map[string]string `json:"settings"`
}

// RouteInput sets one channel; a nil Fallback removes it.
type RouteInput struct {
	Provider   string            `json:"provider"`
	Settings   map[string]string `json:"settings"`
	Fallback   *ChoiceInput      `json:"fallback"`
	UseDefault bool              `json:"use_default"`
}

// Put sets the routes of the channels named in in. Every provider must
// exist, serve the channel and accept its settings (asked through the
// plugin), or nothing is saved.
func (s *Store) Put(ctx context.Context, in map[string]RouteInput) error {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return err
	}
	var v tenants.Validator
	for ch, r := range in {
		if !slices.Contains(Channels, ch) {
			v.Add(ch, "is not a channel (sms or email)")
			continue
		}
		if r.UseDefault {
			continue
		}
		if err := s.checkChoice(ctx, &v, ch, ch+".provider", r.Provider, r.Settings); err != nil {
			return err
		}
		if r.Fallback != nil {
			if r.Fallback.Provider == r.Provider {
				v.Add(ch+".fallback.provider", "must differ from the provider")
			}
			if err := s.checkChoice(ctx, &v, ch, ch+".fallback.provider", r.Fallback.Provider, r.Fallback.Settings); err != nil {
				return err
			}
		}
	}
	if err := v.Err(); err != nil {
		return err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	for ch, r := range in {
		if r.UseDefault {
			if err := tx.Where("channel = ?", ch).Delete(&record{}).Error; err != nil {
				return fmt.Errorf("providers: reset %s: %w", ch, err)
			}
			continue
		}
		rec := record{TenantID: p.TenantID, Channel: ch, Provider: r.Provider, UpdatedAt: time.Now()}
		if rec.Settings, err = s.seal(r.Settings, sealCtx(p.TenantID, ch, "primary")); err != nil {
			return err
		}
		if r.Fallback != nil {
			rec.Fallback = &r.Fallback.Provider
			if rec.FallbackSettings, err = s.seal(r.Fallback.Settings, sealCtx(p.TenantID, ch, "fallback")); err != nil {
				return err
			}
		}
		if err := tx.Save(&rec).Error; err != nil {
			return fmt.Errorf("providers: save %s: %w", ch, err)
		}
	}
	chs := make([]string, 0, len(in))
	for ch := range in {
		chs = append(chs, ch)
	}
	slices.Sort(chs)
	return audit.Record(ctx, p.Actor(), "providers.updated", "channels:"+fmt.Sprint(chs), nil)
}

// checkChoice records what is wrong with a choice in v; it returns an error
// only when the provider could not be asked.
func (s *Store) checkChoice(ctx context.Context, v *tenants.Validator, channel, field, provider string, settings map[string]string) error {
	if provider == "" {
		v.Add(field, "is required")
		return nil
	}
	if !s.checker.Known(provider, channel) {
		v.Add(field, fmt.Sprintf("no installed provider %q sends %s", provider, channel))
		return nil
	}
	err := s.checker.CheckConfig(ctx, provider, settings)
	if tenants.ErrorCode(err) == tenants.EUnavailable {
		return err
	}
	if err != nil {
		// The provider's own words: it names the setting that is wrong.
		v.Add(field, "settings refused: "+err.Error())
	}
	return nil
}

// View is a route as the API shows it: which provider, and which settings
// are set, never their values.
type View struct {
	Channel     string   `json:"channel"`
	Provider    string   `json:"provider"`
	SettingKeys []string `json:"setting_keys"`
	Fallback    *struct {
		Provider    string   `json:"provider"`
		SettingKeys []string `json:"setting_keys"`
	} `json:"fallback"`
	PlatformDefault bool `json:"platform_default"`
}

// Views returns every channel's route for the API.
func (s *Store) Views(ctx context.Context) ([]View, error) {
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return nil, err
	}
	routes, err := s.Routes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]View, 0, len(Channels))
	for _, ch := range Channels {
		r, ok := routes[ch]
		if !ok {
			return nil, fmt.Errorf("providers: no provider for channel %q", ch)
		}
		v := View{Channel: ch, Provider: r.Primary.Provider, PlatformDefault: r.Default, SettingKeys: keys(r.Primary.Settings)}
		if r.Default {
			v.SettingKeys = []string{} // the platform's settings are not the tenant's business
		}
		if r.Fallback != nil {
			v.Fallback = &struct {
				Provider    string   `json:"provider"`
				SettingKeys []string `json:"setting_keys"`
			}{r.Fallback.Provider, keys(r.Fallback.Settings)}
		}
		out = append(out, v)
	}
	return out, nil
}

func keys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
