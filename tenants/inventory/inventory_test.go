package inventory_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/keyrelay/keyrelay/migrations/dbtest"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/inventory"
)

// The package's tests share one migrated database; every test makes its own
// tenants, so the other tenants' rows only make the isolation checks
// stronger.
var testDB *dbtest.DB

func TestMain(m *testing.M) { dbtest.Main(m, "inventory", &testDB) }

// accessTable is a real AccessChecker over a table of its own: a row is a
// live access on a key (with an id and an end when a test needs them). It
// reads in the request's tenant transaction, as tenants/bookings does.
type accessTable struct{}

// KeysReturned and KeysTaken write what they were told to test_reminders.
func (accessTable) KeysReturned(ctx context.Context, ids []uuid.UUID) error {
	return remembered(ctx, "returned", ids)
}

func (accessTable) KeysTaken(ctx context.Context, ids []uuid.UUID) error {
	return remembered(ctx, "taken", ids)
}

// KeysMoved records key ids the same way (access_id holds the key's).
func (accessTable) KeysMoved(ctx context.Context, ids []uuid.UUID) error {
	return remembered(ctx, "moved", ids)
}

func remembered(ctx context.Context, what string, ids []uuid.UUID) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := tx.Exec("INSERT INTO test_reminders (tenant_id, access_id, what) VALUES (current_setting('app.tenant_id')::uuid, ?, ?)", id, what).Error; err != nil {
			return err
		}
	}
	return nil
}

func (accessTable) AccessEnd(ctx context.Context, keyID, accessID uuid.UUID) (*time.Time, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var ends []struct{ EndsAt *time.Time }
	err = tx.Raw("SELECT ends_at FROM test_accesses WHERE tenant_id = current_setting('app.tenant_id')::uuid AND key_id = ? AND id = ?", keyID, accessID).Scan(&ends).Error
	if err != nil {
		return nil, err
	}
	if len(ends) == 0 {
		return nil, tenants.NotFound("booking")
	}
	return ends[0].EndsAt, nil
}

func (accessTable) LiveAccessCount(ctx context.Context, keyID uuid.UUID) (int, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return 0, err
	}
	var n int
	err = tx.Raw("SELECT count(*) FROM test_accesses WHERE tenant_id = current_setting('app.tenant_id')::uuid AND key_id = ?", keyID).Scan(&n).Error
	return n, err
}

var (
	setupOnce sync.Once
	scope     *tenants.Scope
	svc       *inventory.Service
)

// setup opens the application role's pool and makes the access table.
func setup(t *testing.T) {
	t.Helper()
	setupOnce.Do(func() {
		testDB.Exec(t, `CREATE TABLE test_accesses (tenant_id uuid NOT NULL, key_id uuid NOT NULL, id uuid, ends_at timestamptz)`)
		testDB.Exec(t, `GRANT SELECT ON test_accesses TO keyrelay_app`)
		testDB.Exec(t, `CREATE TABLE test_reminders (tenant_id uuid NOT NULL, access_id uuid NOT NULL, what text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`)
		testDB.Exec(t, `GRANT INSERT ON test_reminders TO keyrelay_app`)
		db, err := gorm.Open(postgres.Open(testDB.AppURL), &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
		if err != nil {
			t.Fatal(err)
		}
		scope = tenants.NewScope(db)
		if svc, err = inventory.NewService(accessTable{}); err != nil {
			t.Fatal(err)
		}
	})
	if svc == nil {
		t.Fatal("setup failed earlier")
	}
}

// tenant is a fresh tenant with its owner as caller.
type tenant struct {
	ID    uuid.UUID
	Owner tenants.Principal
}

func newTenant(t *testing.T) tenant {
	t.Helper()
	setup(t)
	id := uuid.New()
	testDB.Exec(t, "INSERT INTO tenants (tenant_id, name) VALUES ($1, $2)", id, "tenant "+id.String()[:8])
	return tenant{ID: id, Owner: tenants.Principal{TenantID: id, UserID: uuid.New(), Role: tenants.RoleOwner}}
}

// staff is a staff user of tn, limited to locs when there are any.
func (tn tenant) staff(locs ...uuid.UUID) tenants.Principal {
	return tenants.Principal{TenantID: tn.ID, UserID: uuid.New(), Role: tenants.RoleStaff, Locations: locs}
}

// as runs fn as p in a tenant transaction that commits only when fn
// succeeds, like a request.
func as[T any](t *testing.T, p tenants.Principal, fn func(ctx context.Context) (T, error)) (T, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var out T
	err := scope.Do(ctx, p.TenantID, func(ctx context.Context) error {
		var err error
		out, err = fn(tenants.WithPrincipal(ctx, p))
		return err
	})
	return out, err
}

// must is as, failing the test on an error.
func must[T any](t *testing.T, p tenants.Principal, fn func(ctx context.Context) (T, error)) T {
	t.Helper()
	out, err := as(t, p, fn)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// wantErr fails unless err is a domain error of code.
func wantErr(t *testing.T, err error, code tenants.Code) *tenants.Error {
	t.Helper()
	var de *tenants.Error
	if !errors.As(err, &de) || de.Code != code {
		t.Fatalf("error %v, want %s", err, code)
	}
	return de
}

// wantFields fails unless err is a validation error naming exactly fields.
func wantFields(t *testing.T, err error, fields ...string) {
	t.Helper()
	de := wantErr(t, err, tenants.EInvalid)
	var got []string
	for _, f := range de.Fields {
		got = append(got, f.Field)
	}
	if !slices.Equal(got, fields) {
		t.Fatalf("field errors on %v (%s), want %v", got, de.Message, fields)
	}
}

func ptr[T any](v T) *T { return &v }

func location(t *testing.T, p tenants.Principal, name string) inventory.Location {
	t.Helper()
	return must(t, p, func(ctx context.Context) (inventory.Location, error) {
		return svc.CreateLocation(ctx, inventory.LocationInput{Name: name, Address: "1 Main St"})
	})
}

func box(t *testing.T, p tenants.Principal, name string, loc *uuid.UUID, bins int) inventory.Box {
	t.Helper()
	in := inventory.BoxInput{Name: name, Model: inventory.MS5, Timezone: "Europe/Paris", Bins: bins}
	if loc != nil {
		in.LocationID = ptr(loc.String())
	}
	return must(t, p, func(ctx context.Context) (inventory.Box, error) { return svc.CreateBox(ctx, in) })
}

func newKey(t *testing.T, p tenants.Principal, name, fob string, b inventory.Box, bin int) inventory.Key {
	t.Helper()
	return must(t, p, func(ctx context.Context) (inventory.Key, error) {
		return svc.CreateKey(ctx, inventory.KeyInput{Name: name, FobSerial: fob, BoxID: b.ID.String(), Bin: bin})
	})
}

func getKey(t *testing.T, p tenants.Principal, id uuid.UUID) inventory.Key {
	t.Helper()
	return must(t, p, func(ctx context.Context) (inventory.Key, error) { return svc.GetKey(ctx, id) })
}

func TestNewServiceNeedsAccessChecker(t *testing.T) {
	if _, err := inventory.NewService(nil); err == nil {
		t.Fatal("NewService(nil) accepted: a key with live bookings could be deleted")
	}
}

func TestLocations(t *testing.T) {
	tn := newTenant(t)
	airport := location(t, tn.Owner, "Airport")
	station := location(t, tn.Owner, "Station")

	t.Run("OKRead", func(t *testing.T) {
		got := must(t, tn.Owner, func(ctx context.Context) (inventory.Location, error) { return svc.GetLocation(ctx, airport.ID) })
		if got.Name != "Airport" || got.Address != "1 Main St" {
			t.Fatalf("got %+v", got)
		}
		ls := must(t, tn.staff(), func(ctx context.Context) ([]inventory.Location, error) { return svc.ListLocations(ctx, uuid.Nil, 10) })
		if len(ls) != 2 || ls[0].ID != station.ID || ls[1].ID != airport.ID {
			t.Fatalf("list = %+v, want station then airport", ls)
		}
		page := must(t, tn.Owner, func(ctx context.Context) ([]inventory.Location, error) { return svc.ListLocations(ctx, station.ID, 10) })
		if len(page) != 1 || page[0].ID != airport.ID {
			t.Fatalf("page after the cursor = %+v", page)
		}
	})
	t.Run("ErrNameRequired", func(t *testing.T) {
		_, err := as(t, tn.Owner, func(ctx context.Context) (inventory.Location, error) {
			return svc.CreateLocation(ctx, inventory.LocationInput{Name: "  ", Address: strings.Repeat("x", 501)})
		})
		wantFields(t, err, "name", "address")
	})
	t.Run("ErrNameControlCharacters", func(t *testing.T) {
		_, err := as(t, tn.Owner, func(ctx context.Context) (inventory.Location, error) {
			return svc.CreateLocation(ctx, inventory.LocationInput{Name: "Air\x00port"})
		})
		wantFields(t, err, "name")
	})
	t.Run("ErrDuplicateName", func(t *testing.T) {
		_, err := as(t, tn.Owner, func(ctx context.Context) (inventory.Location, error) {
			return svc.CreateLocation(ctx, inventory.LocationInput{Name: " Airport "})
		})
		wantErr(t, err, tenants.EConflict)
		_, err = as(t, tn.Owner, func(ctx context.Context) (inventory.Location, error) {
			return svc.UpdateLocation(ctx, station.ID, inventory.LocationPatch{Name: ptr("Airport")})
		})
		wantErr(t, err, tenants.EConflict)
	})
	t.Run("ErrStaffCannotManage", func(t *testing.T) {
		_, err := as(t, tn.staff(), func(ctx context.Context) (inventory.Location, error) {
			return svc.CreateLocation(ctx, inventory.LocationInput{Name: "Harbour"})
		})
		wantErr(t, err, tenants.EForbidden)
		_, err = as(t, tn.staff(), func(ctx context.Context) (struct{}, error) { return struct{}{}, svc.DeleteLocation(ctx, station.ID) })
		wantErr(t, err, tenants.EForbidden)
	})
	t.Run("LimitedStaffSeesTheirOwn", func(t *testing.T) {
		limited := tn.staff(airport.ID)
		ls := must(t, limited, func(ctx context.Context) ([]inventory.Location, error) { return svc.ListLocations(ctx, uuid.Nil, 10) })
		if len(ls) != 1 || ls[0].ID != airport.ID {
			t.Fatalf("a staff user limited to the airport lists %+v", ls)
		}
		_, err := as(t, limited, func(ctx context.Context) (inventory.Location, error) { return svc.GetLocation(ctx, station.ID) })
		wantErr(t, err, tenants.ENotFound)
	})
	t.Run("ErrOtherTenant", func(t *testing.T) {
		other := newTenant(t)
		_, err := as(t, other.Owner, func(ctx context.Context) (inventory.Location, error) { return svc.GetLocation(ctx, airport.ID) })
		wantErr(t, err, tenants.ENotFound)
		_, err = as(t, other.Owner, func(ctx context.Context) (inventory.Location, error) {
			return svc.UpdateLocation(ctx, airport.ID, inventory.LocationPatch{Name: ptr("Mine")})
		})
		wantErr(t, err, tenants.ENotFound)
		_, err = as(t, other.Owner, func(ctx context.Context) (inventory.Box, error) {
			return svc.CreateBox(ctx, inventory.BoxInput{Name: "B", Model: inventory.MS3, LocationID: ptr(airport.ID.String()), Timezone: "UTC", Bins: 4})
		})
		wantErr(t, err, tenants.ENotFound)
	})
	t.Run("OKUpdate", func(t *testing.T) {
		l := must(t, tn.Owner, func(ctx context.Context) (inventory.Location, error) {
			return svc.UpdateLocation(ctx, station.ID, inventory.LocationPatch{Address: ptr("2 Rail Rd")})
		})
		if l.Name != "Station" || l.Address != "2 Rail Rd" {
			t.Fatalf("after patch: %+v", l)
		}
	})
	t.Run("DeleteRules", func(t *testing.T) {
		harbour := location(t, tn.Owner, "Harbour")
		b := box(t, tn.Owner, "Pier", &harbour.ID, 4)
		del := func() error {
			_, err := as(t, tn.Owner, func(ctx context.Context) (struct{}, error) { return struct{}{}, svc.DeleteLocation(ctx, harbour.ID) })
			return err
		}
		if de := wantErr(t, del(), tenants.EConflict); !strings.Contains(de.Message, "Pier") {
			t.Errorf("the refusal does not name the box: %s", de.Message)
		}
		must(t, tn.Owner, func(ctx context.Context) (struct{}, error) { return struct{}{}, svc.DeleteBox(ctx, b.ID) })

		// A user limited to the location: deleting it would lift the limit.
		userID := uuid.New()
		testDB.Exec(t, "INSERT INTO users (tenant_id, id, name, email, role) VALUES ($1, $2, 'Sam', $3, 'staff')", tn.ID, userID, "sam-"+userID.String()[:8]+"@example.com")
		testDB.Exec(t, "INSERT INTO user_locations (tenant_id, user_id, location_id) VALUES ($1, $2, $3)", tn.ID, userID, harbour.ID)
		wantErr(t, del(), tenants.EConflict)
		testDB.Exec(t, "DELETE FROM user_locations WHERE tenant_id = $1 AND user_id = $2", tn.ID, userID)

		if err := del(); err != nil {
			t.Fatal(err)
		}
		_, err := as(t, tn.Owner, func(ctx context.Context) (inventory.Location, error) { return svc.GetLocation(ctx, harbour.ID) })
		wantErr(t, err, tenants.ENotFound)
		if n := testDB.Exec(t, "SELECT 1 FROM boxes WHERE tenant_id = $1 AND id = $2 AND location_id IS NULL", tn.ID, b.ID); n != 1 {
			t.Error("the archived box still names the deleted location")
		}
		if n := testDB.Exec(t, "SELECT 1 FROM audit_events WHERE tenant_id = $1 AND action = 'location.deleted' AND target = $2", tn.ID, "location:"+harbour.ID.String()); n != 1 {
			t.Error("the deletion was not audited")
		}
	})
}

func TestBoxValidation(t *testing.T) {
	tn := newTenant(t)
	valid := func() inventory.BoxInput {
		return inventory.BoxInput{Name: "Lobby", Model: inventory.MS4, Timezone: "America/New_York", Bins: 12, Latitude: ptr(40.7), Longitude: ptr(-74.0)}
	}
	for _, tc := range []struct {
		name   string
		change func(*inventory.BoxInput)
		fields []string
	}{
		{"ErrNameRequired", func(in *inventory.BoxInput) { in.Name = "" }, []string{"name"}},
		{"ErrModel", func(in *inventory.BoxInput) { in.Model = "MS9" }, []string{"model"}},
		{"ErrModelCase", func(in *inventory.BoxInput) { in.Model = "ms5" }, []string{"model"}},
		{"ErrLatitudeWithoutLongitude", func(in *inventory.BoxInput) { in.Longitude = nil }, []string{"longitude"}},
		{"ErrLongitudeWithoutLatitude", func(in *inventory.BoxInput) { in.Latitude = nil }, []string{"latitude"}},
		{"ErrLatitudeRange", func(in *inventory.BoxInput) { in.Latitude = ptr(90.5) }, []string{"latitude"}},
		{"ErrLongitudeRange", func(in *inventory.BoxInput) { in.Longitude = ptr(-180.1) }, []string{"longitude"}},
		{"ErrTimezoneUnknown", func(in *inventory.BoxInput) { in.Timezone = "Mars/Olympus_Mons" }, []string{"timezone"}},
		{"ErrTimezoneEmpty", func(in *inventory.BoxInput) { in.Timezone = "" }, []string{"timezone"}},
		{"ErrTimezoneLocal", func(in *inventory.BoxInput) { in.Timezone = "Local" }, []string{"timezone"}},
		{"ErrNoBins", func(in *inventory.BoxInput) { in.Bins = 0 }, []string{"bins"}},
		{"ErrTooManyBins", func(in *inventory.BoxInput) { in.Bins = 501 }, []string{"bins"}},
		{"ErrLocationID", func(in *inventory.BoxInput) { in.LocationID = ptr("airport") }, []string{"location_id"}},
		{"ErrAddressTooLong", func(in *inventory.BoxInput) { in.Address = strings.Repeat("a", 501) }, []string{"address"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := valid()
			tc.change(&in)
			_, err := as(t, tn.Owner, func(ctx context.Context) (inventory.Box, error) { return svc.CreateBox(ctx, in) })
			wantFields(t, err, tc.fields...)
		})
	}
	t.Run("ErrUnknownLocation", func(t *testing.T) {
		in := valid()
		in.LocationID = ptr(uuid.NewString())
		_, err := as(t, tn.Owner, func(ctx context.Context) (inventory.Box, error) { return svc.CreateBox(ctx, in) })
		wantErr(t, err, tenants.ENotFound)
	})
	t.Run("ErrStaffCannotInstall", func(t *testing.T) {
		_, err := as(t, tn.staff(), func(ctx context.Context) (inventory.Box, error) { return svc.CreateBox(ctx, valid()) })
		wantErr(t, err, tenants.EForbidden)
	})
	t.Run("OKOfflineOnlyOnMS4AndMS5", func(t *testing.T) {
		for m, want := range map[inventory.Model]bool{inventory.MS3: false, inventory.MS4: true, inventory.MS5: true} {
			in := valid()
			in.Model = m
			b := must(t, tn.Owner, func(ctx context.Context) (inventory.Box, error) { return svc.CreateBox(ctx, in) })
			if b.Model.OfflineCapable() != want {
				t.Errorf("%s offline capable = %v", m, !want)
			}
		}
	})
	if n := testDB.Exec(t, "SELECT 1 FROM boxes WHERE tenant_id = $1", tn.ID); n != 3 {
		t.Errorf("%d boxes stored, want only the 3 valid ones", n)
	}
}

func TestBoxes(t *testing.T) {
	tn := newTenant(t)
	airport := location(t, tn.Owner, "Airport")
	station := location(t, tn.Owner, "Station")
	lobby := box(t, tn.Owner, "Lobby", &airport.ID, 10)
	kiosk := box(t, tn.Owner, "Kiosk", &station.ID, 10)
	loose := box(t, tn.Owner, "Loose", nil, 2)

	t.Run("OKPatchClearsCoordinatesWithNull", func(t *testing.T) {
		b := must(t, tn.Owner, func(ctx context.Context) (inventory.Box, error) {
			return svc.UpdateBox(ctx, loose.ID, inventory.BoxPatch{Latitude: inventory.Some(48.85), Longitude: inventory.Some(2.35)})
		})
		if b.Latitude == nil || *b.Latitude != 48.85 {
			t.Fatalf("coordinates not set: %+v", b)
		}
		_, err := as(t, tn.Owner, func(ctx context.Context) (inventory.Box, error) {
			return svc.UpdateBox(ctx, loose.ID, inventory.BoxPatch{Latitude: inventory.Null[float64]()})
		})
		wantFields(t, err, "latitude")
		b = must(t, tn.Owner, func(ctx context.Context) (inventory.Box, error) {
			return svc.UpdateBox(ctx, loose.ID, inventory.BoxPatch{Latitude: inventory.Null[float64](), Longitude: inventory.Null[float64](), Name: ptr("Loose box")})
		})
		if b.Latitude != nil || b.Longitude != nil || b.Name != "Loose box" || b.Timezone != "Europe/Paris" {
			t.Fatalf("after clearing: %+v", b)
		}
	})
	t.Run("OKPatchMovesToLocationAndBack", func(t *testing.T) {
		b := must(t, tn.Owner, func(ctx context.Context) (inventory.Box, error) {
			return svc.UpdateBox(ctx, loose.ID, inventory.BoxPatch{LocationID: inventory.Some(station.ID.String())})
		})
		if b.LocationID == nil || *b.LocationID != station.ID {
			t.Fatalf("location not set: %+v", b)
		}
		b = must(t, tn.Owner, func(ctx context.Context) (inventory.Box, error) {
			return svc.UpdateBox(ctx, loose.ID, inventory.BoxPatch{LocationID: inventory.Null[string]()})
		})
		if b.LocationID != nil {
			t.Fatalf("location not cleared: %+v", b)
		}
		_, err := as(t, tn.Owner, func(ctx context.Context) (inventory.Box, error) {
			return svc.UpdateBox(ctx, loose.ID, inventory.BoxPatch{LocationID: inventory.Some(uuid.NewString())})
		})
		wantErr(t, err, tenants.ENotFound)
	})
	t.Run("ErrPatchInvalid", func(t *testing.T) {
		_, err := as(t, tn.Owner, func(ctx context.Context) (inventory.Box, error) {
			return svc.UpdateBox(ctx, loose.ID, inventory.BoxPatch{Timezone: ptr("Nowhere/City"), Model: ptr(inventory.Model("X1")), Bins: ptr(0)})
		})
		wantFields(t, err, "model", "timezone", "bins")
	})

	t.Run("LimitedStaffSeesTheirLocationsBoxes", func(t *testing.T) {
		limited := tn.staff(airport.ID)
		bs := must(t, limited, func(ctx context.Context) ([]inventory.Box, error) {
			return svc.ListBoxes(ctx, inventory.BoxFilter{Limit: 50})
		})
		if len(bs) != 1 || bs[0].ID != lobby.ID {
			t.Fatalf("limited staff lists %+v, want the lobby only", bs)
		}
		bs = must(t, limited, func(ctx context.Context) ([]inventory.Box, error) {
			return svc.ListBoxes(ctx, inventory.BoxFilter{LocationID: station.ID, Limit: 50})
		})
		if len(bs) != 0 {
			t.Fatalf("filtering on another location shows %+v", bs)
		}
		for _, id := range []uuid.UUID{kiosk.ID, loose.ID} {
			_, err := as(t, limited, func(ctx context.Context) (inventory.Box, error) {
				b, _, err := svc.GetBox(ctx, id)
				return b, err
			})
			wantErr(t, err, tenants.ENotFound)
		}
		all := must(t, tn.staff(), func(ctx context.Context) ([]inventory.Box, error) {
			return svc.ListBoxes(ctx, inventory.BoxFilter{Limit: 2})
		})
		if len(all) != 2 || all[0].ID != loose.ID || all[1].ID != kiosk.ID {
			t.Fatalf("first page, newest first: %+v", all)
		}
	})

	t.Run("BinContents", func(t *testing.T) {
		home := newKey(t, tn.Owner, "Room 1", "FOB-BIN-1", lobby, 1)
		visitor := newKey(t, tn.Owner, "Car 7", "FOB-BIN-2", kiosk, 7)
		// The car key was dropped off at the lobby, bin 3.
		testDB.Exec(t, "UPDATE keys SET box_id = $1, bin = 3 WHERE tenant_id = $2 AND id = $3", lobby.ID, tn.ID, visitor.ID)

		bins := func(p tenants.Principal) []inventory.Bin {
			return must(t, p, func(ctx context.Context) ([]inventory.Bin, error) {
				_, bins, err := svc.GetBox(ctx, lobby.ID)
				return bins, err
			})
		}
		all := bins(tn.Owner)
		if len(all) != 10 || all[0].Bin != 1 || all[9].Bin != 10 {
			t.Fatalf("bins: %+v", all)
		}
		if b := all[0]; !b.Occupied || b.Key == nil || b.Key.ID != home.ID || b.Key.FobSerial != "FOB-BIN-1" || b.HomeOf == nil || b.HomeOf.ID != home.ID {
			t.Errorf("bin 1: %+v", b)
		}
		if b := all[2]; !b.Occupied || b.Key == nil || b.Key.ID != visitor.ID || b.HomeOf != nil {
			t.Errorf("bin 3: %+v", b)
		}
		if b := all[1]; b.Occupied || b.Key != nil || b.HomeOf != nil {
			t.Errorf("bin 2: %+v", b)
		}
		// A staff user of the airport sees that bin 3 is taken, not by what.
		if b := bins(tn.staff(airport.ID))[2]; !b.Occupied || b.Key != nil {
			t.Errorf("bin 3 for the airport's staff: %+v", b)
		}

		// Bins cannot shrink below a key's home or a key in a bin.
		shrink := func(n int) error {
			_, err := as(t, tn.Owner, func(ctx context.Context) (inventory.Box, error) {
				return svc.UpdateBox(ctx, lobby.ID, inventory.BoxPatch{Bins: ptr(n)})
			})
			return err
		}
		if de := wantErr(t, shrink(2), tenants.EConflict); !strings.Contains(de.Message, "bin 3") || !strings.Contains(de.Message, "Car 7") {
			t.Errorf("refusal: %s", de.Message)
		}
		if err := shrink(3); err != nil {
			t.Fatal(err)
		}
		testDB.Exec(t, "UPDATE keys SET box_id = $1, bin = 7 WHERE tenant_id = $2 AND id = $3", kiosk.ID, tn.ID, visitor.ID)
		wantFields(t, shrink(0), "bins")
		if err := shrink(1); err != nil {
			t.Fatal(err)
		}
		_, err := as(t, tn.Owner, func(ctx context.Context) (inventory.Box, error) {
			return svc.UpdateBox(ctx, kiosk.ID, inventory.BoxPatch{Bins: ptr(6)})
		})
		if de := wantErr(t, err, tenants.EConflict); !strings.Contains(de.Message, "bin 7 is the home of key \"Car 7\"") {
			t.Errorf("refusal: %s", de.Message)
		}

		// A box is not archived while keys have their home there, or are in
		// its bins.
		archive := func(id uuid.UUID) error {
			_, err := as(t, tn.Owner, func(ctx context.Context) (struct{}, error) { return struct{}{}, svc.DeleteBox(ctx, id) })
			return err
		}
		wantErr(t, archive(lobby.ID), tenants.EConflict)
		must(t, tn.Owner, func(ctx context.Context) (struct{}, error) { return struct{}{}, svc.DeleteKey(ctx, home.ID) })
		testDB.Exec(t, "UPDATE keys SET box_id = $1, bin = 1 WHERE tenant_id = $2 AND id = $3", lobby.ID, tn.ID, visitor.ID)
		if de := wantErr(t, archive(lobby.ID), tenants.EConflict); !strings.Contains(de.Message, "Car 7") {
			t.Errorf("refusal: %s", de.Message)
		}
		testDB.Exec(t, "UPDATE keys SET box_id = $1, bin = 7 WHERE tenant_id = $2 AND id = $3", kiosk.ID, tn.ID, visitor.ID)
		if err := archive(lobby.ID); err != nil {
			t.Fatal(err)
		}
		_, err = as(t, tn.Owner, func(ctx context.Context) (inventory.Box, error) {
			b, _, err := svc.GetBox(ctx, lobby.ID)
			return b, err
		})
		wantErr(t, err, tenants.ENotFound)
		wantErr(t, archive(lobby.ID), tenants.ENotFound)
		_, err = as(t, tn.Owner, func(ctx context.Context) (inventory.Key, error) {
			return svc.CreateKey(ctx, inventory.KeyInput{Name: "Late", FobSerial: "FOB-LATE", BoxID: lobby.ID.String(), Bin: 1})
		})
		wantErr(t, err, tenants.ENotFound)
	})

	t.Run("ErrOtherTenant", func(t *testing.T) {
		other := newTenant(t)
		_, err := as(t, other.Owner, func(ctx context.Context) (inventory.Box, error) {
			return svc.UpdateBox(ctx, kiosk.ID, inventory.BoxPatch{Name: ptr("Mine")})
		})
		wantErr(t, err, tenants.ENotFound)
		_, err = as(t, other.Owner, func(ctx context.Context) (struct{}, error) { return struct{}{}, svc.DeleteBox(ctx, kiosk.ID) })
		wantErr(t, err, tenants.ENotFound)
		bs := must(t, other.Owner, func(ctx context.Context) ([]inventory.Box, error) {
			return svc.ListBoxes(ctx, inventory.BoxFilter{Limit: 50})
		})
		if len(bs) != 0 {
			t.Fatalf("another tenant lists %d boxes", len(bs))
		}
	})
}

func TestKeys(t *testing.T) {
	tn := newTenant(t)
	airport := location(t, tn.Owner, "Airport")
	station := location(t, tn.Owner, "Station")
	lobby := box(t, tn.Owner, "Lobby", &airport.ID, 10)
	kiosk := box(t, tn.Owner, "Kiosk", &station.ID, 10)
	desk := tn.staff(airport.ID)

	room1 := newKey(t, desk, "Room 1", "04A1B2C3", lobby, 1)
	if w := room1.WhereaboutsAt(time.Now()); w.State != inventory.InBin || *w.BoxID != lobby.ID || *w.Bin != 1 || w.Since != nil {
		t.Fatalf("a new key is not in its home bin: %+v", w)
	}
	create := func(p tenants.Principal, in inventory.KeyInput) error {
		_, err := as(t, p, func(ctx context.Context) (inventory.Key, error) { return svc.CreateKey(ctx, in) })
		return err
	}

	t.Run("ErrInvalid", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			in     inventory.KeyInput
			fields []string
		}{
			{"ErrAllMissing", inventory.KeyInput{}, []string{"name", "fob_serial", "box_id", "bin"}},
			{"ErrFobSerialPattern", inventory.KeyInput{Name: "K", FobSerial: "04 A1", BoxID: lobby.ID.String(), Bin: 2}, []string{"fob_serial"}},
			{"ErrFobSerialTooLong", inventory.KeyInput{Name: "K", FobSerial: strings.Repeat("A", 65), BoxID: lobby.ID.String(), Bin: 2}, []string{"fob_serial"}},
			{"ErrBoxID", inventory.KeyInput{Name: "K", FobSerial: "X1", BoxID: "lobby", Bin: 2}, []string{"box_id"}},
			{"ErrBinNegative", inventory.KeyInput{Name: "K", FobSerial: "X1", BoxID: lobby.ID.String(), Bin: -1}, []string{"bin"}},
			{"ErrBinBeyondBox", inventory.KeyInput{Name: "K", FobSerial: "X1", BoxID: lobby.ID.String(), Bin: 11}, []string{"bin"}},
			{"ErrNameTooLong", inventory.KeyInput{Name: strings.Repeat("k", 201), FobSerial: "X1", BoxID: lobby.ID.String(), Bin: 2}, []string{"name"}},
		} {
			t.Run(tc.name, func(t *testing.T) { wantFields(t, create(desk, tc.in), tc.fields...) })
		}
	})
	t.Run("ErrFobTaken", func(t *testing.T) {
		de := wantErr(t, create(desk, inventory.KeyInput{Name: "Room 2", FobSerial: "04A1B2C3", BoxID: lobby.ID.String(), Bin: 2}), tenants.EConflict)
		if !strings.Contains(de.Message, "Room 1") {
			t.Errorf("refusal does not name the key: %s", de.Message)
		}
		// A limited user is not told the name of a key they cannot see.
		newKey(t, tn.Owner, "Car 9", "CAR-9", kiosk, 9)
		de = wantErr(t, create(desk, inventory.KeyInput{Name: "Room 2", FobSerial: "CAR-9", BoxID: lobby.ID.String(), Bin: 2}), tenants.EConflict)
		if strings.Contains(de.Message, "Car 9") {
			t.Errorf("refusal names another location's key: %s", de.Message)
		}
	})
	t.Run("ErrHomeBinTaken", func(t *testing.T) {
		de := wantErr(t, create(desk, inventory.KeyInput{Name: "Room 1b", FobSerial: "04A1B2C4", BoxID: lobby.ID.String(), Bin: 1}), tenants.EConflict)
		if !strings.Contains(de.Message, `"Room 1"`) || !strings.Contains(de.Message, room1.ID.String()) {
			t.Errorf("refusal does not name the key that has the bin: %s", de.Message)
		}
	})
	t.Run("ErrBoxOutsideLocations", func(t *testing.T) {
		wantErr(t, create(desk, inventory.KeyInput{Name: "Car 1", FobSerial: "CAR-1", BoxID: kiosk.ID.String(), Bin: 1}), tenants.ENotFound)
		wantErr(t, create(desk, inventory.KeyInput{Name: "Car 1", FobSerial: "CAR-1", BoxID: uuid.NewString(), Bin: 1}), tenants.ENotFound)
	})
	t.Run("ErrVisitor", func(t *testing.T) {
		visitor := tenants.Principal{TenantID: tn.ID, UserID: uuid.New(), Role: tenants.RoleVisitor}
		wantErr(t, create(visitor, inventory.KeyInput{Name: "V", FobSerial: "V1", BoxID: lobby.ID.String(), Bin: 5}), tenants.EForbidden)
		_, err := as(t, visitor, func(ctx context.Context) ([]inventory.Key, error) {
			return svc.ListKeys(ctx, inventory.KeyFilter{Limit: 5})
		})
		wantErr(t, err, tenants.EForbidden)
	})

	t.Run("MoveHomeMovesTheKeyAtHome", func(t *testing.T) {
		k := newKey(t, desk, "Room 4", "ROOM-4", lobby, 4)
		k = must(t, desk, func(ctx context.Context) (inventory.Key, error) {
			return svc.UpdateKey(ctx, k.ID, inventory.KeyPatch{Bin: ptr(5)})
		})
		if k.HomeBin != 5 || *k.Bin != 5 || *k.BoxID != lobby.ID {
			t.Fatalf("after moving home: %+v", k)
		}
		got := getKey(t, desk, k.ID)
		if got.HomeBin != 5 || !got.AtHome() {
			t.Fatalf("stored: %+v", got)
		}
		// Moving to another location's box is not the airport desk's to do.
		_, err := as(t, desk, func(ctx context.Context) (inventory.Key, error) {
			return svc.UpdateKey(ctx, k.ID, inventory.KeyPatch{BoxID: ptr(kiosk.ID.String())})
		})
		wantErr(t, err, tenants.ENotFound)
		k = must(t, tn.Owner, func(ctx context.Context) (inventory.Key, error) {
			return svc.UpdateKey(ctx, k.ID, inventory.KeyPatch{BoxID: ptr(kiosk.ID.String())})
		})
		if k.HomeBoxID != kiosk.ID || *k.BoxID != kiosk.ID || *k.Bin != 5 {
			t.Fatalf("after moving to the kiosk: %+v", k)
		}
		// Now the airport desk does not see it at all.
		_, err = as(t, desk, func(ctx context.Context) (inventory.Key, error) { return svc.GetKey(ctx, k.ID) })
		wantErr(t, err, tenants.ENotFound)
		_, err = as(t, desk, func(ctx context.Context) (struct{}, error) { return struct{}{}, svc.DeleteKey(ctx, k.ID) })
		wantErr(t, err, tenants.ENotFound)
	})
	t.Run("MoveHomeLeavesAKeyThatIsOut", func(t *testing.T) {
		k := newKey(t, desk, "Room 6", "ROOM-6", lobby, 6)
		access := uuid.New()
		testDB.Exec(t, "UPDATE keys SET state = 'out', box_id = NULL, bin = NULL, out_access_id = $1, out_since = now() - interval '1 hour', out_until = now() + interval '1 day' WHERE tenant_id = $2 AND id = $3", access, tn.ID, k.ID)
		k = must(t, desk, func(ctx context.Context) (inventory.Key, error) {
			return svc.UpdateKey(ctx, k.ID, inventory.KeyPatch{Bin: ptr(7), Name: ptr(" Room 6 (sea view) ")})
		})
		if k.HomeBin != 7 || k.State != inventory.Out || k.BoxID != nil || k.Name != "Room 6 (sea view)" {
			t.Fatalf("after moving home: %+v", k)
		}
		w := getKey(t, desk, k.ID).WhereaboutsAt(time.Now())
		if w.State != inventory.Out || w.AccessID == nil || *w.AccessID != access || w.Since == nil || w.Until == nil || w.BoxID != nil {
			t.Fatalf("whereabouts: %+v", w)
		}
		if w := getKey(t, desk, k.ID).WhereaboutsAt(time.Now().Add(48 * time.Hour)); w.State != inventory.Overdue {
			t.Fatalf("two days later: %+v, want overdue", w)
		}
		// Its old home bin is free for another key.
		newKey(t, desk, "Room 6b", "ROOM-6B", lobby, 6)
	})
	t.Run("ErrMoveHomeConflicts", func(t *testing.T) {
		k := newKey(t, desk, "Room 8", "ROOM-8", lobby, 8)
		_, err := as(t, desk, func(ctx context.Context) (inventory.Key, error) {
			return svc.UpdateKey(ctx, k.ID, inventory.KeyPatch{Bin: ptr(1)})
		})
		if de := wantErr(t, err, tenants.EConflict); !strings.Contains(de.Message, "Room 1") {
			t.Errorf("refusal: %s", de.Message)
		}
		_, err = as(t, desk, func(ctx context.Context) (inventory.Key, error) {
			return svc.UpdateKey(ctx, k.ID, inventory.KeyPatch{Bin: ptr(11)})
		})
		wantFields(t, err, "bin")
		_, err = as(t, desk, func(ctx context.Context) (inventory.Key, error) {
			return svc.UpdateKey(ctx, k.ID, inventory.KeyPatch{FobSerial: ptr("04A1B2C3")})
		})
		wantErr(t, err, tenants.EConflict)
		// The key keeps its own fob.
		must(t, desk, func(ctx context.Context) (inventory.Key, error) {
			return svc.UpdateKey(ctx, k.ID, inventory.KeyPatch{FobSerial: ptr("ROOM-8")})
		})
		if got := getKey(t, desk, k.ID); got.HomeBin != 8 || got.FobSerial != "ROOM-8" {
			t.Fatalf("a refused move changed the key: %+v", got)
		}
	})

	t.Run("ListFilters", func(t *testing.T) {
		lt := newTenant(t)
		loc := location(t, lt.Owner, "Here")
		elsewhere := location(t, lt.Owner, "There")
		b1 := box(t, lt.Owner, "One", &loc.ID, 20)
		b2 := box(t, lt.Owner, "Two", &elsewhere.ID, 20)
		var ids []uuid.UUID
		for i := 1; i <= 5; i++ {
			ids = append(ids, newKey(t, lt.Owner, "K", "F"+string(rune('0'+i)), b1, i).ID)
		}
		other := newKey(t, lt.Owner, "K", "F9", b2, 1)
		testDB.Exec(t, "UPDATE keys SET state = 'out', box_id = NULL, bin = NULL, out_access_id = gen_random_uuid(), out_since = now() - interval '2 days', out_until = now() - interval '1 hour' WHERE tenant_id = $1 AND id = $2", lt.ID, ids[0])
		testDB.Exec(t, "UPDATE keys SET state = 'out', box_id = NULL, bin = NULL, out_access_id = gen_random_uuid(), out_since = now() - interval '2 days', out_until = NULL WHERE tenant_id = $1 AND id = $2", lt.ID, ids[1])
		list := func(p tenants.Principal, f inventory.KeyFilter) []uuid.UUID {
			if f.Limit == 0 {
				f.Limit = 50
			}
			ks := must(t, p, func(ctx context.Context) ([]inventory.Key, error) { return svc.ListKeys(ctx, f) })
			out := make([]uuid.UUID, len(ks))
			for i, k := range ks {
				out[i] = k.ID
			}
			return out
		}
		for _, tc := range []struct {
			name string
			p    tenants.Principal
			f    inventory.KeyFilter
			want []uuid.UUID
		}{
			{"All", lt.Owner, inventory.KeyFilter{}, []uuid.UUID{other.ID, ids[4], ids[3], ids[2], ids[1], ids[0]}},
			{"Box", lt.Owner, inventory.KeyFilter{BoxID: b2.ID}, []uuid.UUID{other.ID}},
			{"Location", lt.Owner, inventory.KeyFilter{LocationID: loc.ID}, []uuid.UUID{ids[4], ids[3], ids[2], ids[1], ids[0]}},
			{"InBin", lt.Owner, inventory.KeyFilter{State: inventory.InBin, LocationID: loc.ID}, []uuid.UUID{ids[4], ids[3], ids[2]}},
			{"Out", lt.Owner, inventory.KeyFilter{State: inventory.Out}, []uuid.UUID{ids[1]}},
			{"Overdue", lt.Owner, inventory.KeyFilter{State: inventory.Overdue}, []uuid.UUID{ids[0]}},
			{"Page", lt.Owner, inventory.KeyFilter{After: ids[3], Limit: 2}, []uuid.UUID{ids[2], ids[1]}},
			{"Limited", lt.staff(elsewhere.ID), inventory.KeyFilter{}, []uuid.UUID{other.ID}},
			{"LimitedFilteringElsewhere", lt.staff(elsewhere.ID), inventory.KeyFilter{LocationID: loc.ID}, []uuid.UUID{}},
			{"LimitedFilteringOtherBox", lt.staff(elsewhere.ID), inventory.KeyFilter{BoxID: b1.ID}, []uuid.UUID{}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if got := list(tc.p, tc.f); !slices.Equal(got, tc.want) {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			})
		}
	})

	t.Run("DeleteRefusedWhileAccessesLive", func(t *testing.T) {
		k := newKey(t, desk, "Room 9", "ROOM-9", lobby, 9)
		testDB.Exec(t, "INSERT INTO test_accesses (tenant_id, key_id) VALUES ($1, $2), ($1, $2)", tn.ID, k.ID)
		del := func() error {
			_, err := as(t, desk, func(ctx context.Context) (struct{}, error) { return struct{}{}, svc.DeleteKey(ctx, k.ID) })
			return err
		}
		if de := wantErr(t, del(), tenants.EConflict); !strings.Contains(de.Message, "2 live") {
			t.Errorf("refusal: %s", de.Message)
		}
		getKey(t, desk, k.ID)
		testDB.Exec(t, "DELETE FROM test_accesses WHERE tenant_id = $1 AND key_id = $2", tn.ID, k.ID)
		if err := del(); err != nil {
			t.Fatal(err)
		}
		_, err := as(t, desk, func(ctx context.Context) (inventory.Key, error) { return svc.GetKey(ctx, k.ID) })
		wantErr(t, err, tenants.ENotFound)
		wantErr(t, del(), tenants.ENotFound)
		// Its fob and home bin are free again; the archived row stays.
		newKey(t, desk, "Room 9 (new lock)", "ROOM-9", lobby, 9)
		if n := testDB.Exec(t, "SELECT 1 FROM keys WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NOT NULL", tn.ID, k.ID); n != 1 {
			t.Error("the deleted key was not archived")
		}
	})

	t.Run("ErrOtherTenant", func(t *testing.T) {
		other := newTenant(t)
		_, err := as(t, other.Owner, func(ctx context.Context) (inventory.Key, error) { return svc.GetKey(ctx, room1.ID) })
		wantErr(t, err, tenants.ENotFound)
		_, err = as(t, other.Owner, func(ctx context.Context) (inventory.Key, error) {
			return svc.UpdateKey(ctx, room1.ID, inventory.KeyPatch{Name: ptr("Mine")})
		})
		wantErr(t, err, tenants.ENotFound)
		otherBox := box(t, other.Owner, "Theirs", nil, 4)
		// Another tenant's box as a key's home, in either direction.
		wantErr(t, create(desk, inventory.KeyInput{Name: "X", FobSerial: "X-1", BoxID: otherBox.ID.String(), Bin: 1}), tenants.ENotFound)
		_, err = as(t, other.Owner, func(ctx context.Context) (inventory.Key, error) {
			return svc.CreateKey(ctx, inventory.KeyInput{Name: "X", FobSerial: "04A1B2C3", BoxID: lobby.ID.String(), Bin: 3})
		})
		wantErr(t, err, tenants.ENotFound)
		// The same fob serial is fine in another tenant.
		newKey(t, other.Owner, "Theirs", "04A1B2C3", otherBox, 1)
	})

	t.Run("Audited", func(t *testing.T) {
		for _, action := range []string{"key.created", "key.updated", "key.deleted", "box.created", "location.created"} {
			if n := testDB.Exec(t, "SELECT 1 FROM audit_events WHERE tenant_id = $1 AND action = $2", tn.ID, action); n == 0 {
				t.Errorf("no %s audit entry", action)
			}
		}
		if n := testDB.Exec(t, "SELECT 1 FROM audit_events WHERE tenant_id = $1 AND action = 'key.created' AND target = $2 AND actor = $3", tn.ID, "key:"+room1.ID.String(), desk.Actor()); n != 1 {
			t.Error("the key's creation is not audited with its actor")
		}
	})
}

func TestExportKeys(t *testing.T) {
	tn := newTenant(t)
	airport := location(t, tn.Owner, "=Airport")
	station := location(t, tn.Owner, "Station, north")
	lobby := box(t, tn.Owner, "Lobby", &airport.ID, 10)
	kiosk := box(t, tn.Owner, `The "big" kiosk`, &station.ID, 10)
	loose := box(t, tn.Owner, "Loose", nil, 2)
	newKey(t, tn.Owner, `=HYPERLINK("http://evil.example","x")`, "-2", lobby, 2)
	newKey(t, tn.Owner, "@SUM(A1)", "A-1", lobby, 1)
	newKey(t, tn.Owner, "+1 spare", "B.7", kiosk, 7)
	newKey(t, tn.Owner, "Room, with comma", "C:1", kiosk, 1)
	newKey(t, tn.Owner, "Nowhere", "D_1", loose, 1)
	archived := newKey(t, tn.Owner, "Gone", "E1", loose, 2)
	must(t, tn.Owner, func(ctx context.Context) (struct{}, error) { return struct{}{}, svc.DeleteKey(ctx, archived.ID) })

	sheet := func(p tenants.Principal) [][]string {
		t.Helper()
		raw := must(t, p, func(ctx context.Context) ([]byte, error) {
			var buf bytes.Buffer
			err := svc.ExportKeys(ctx, &buf)
			return buf.Bytes(), err
		})
		rows, err := csv.NewReader(bytes.NewReader(raw)).ReadAll()
		if err != nil {
			t.Fatalf("the sheet is not valid CSV: %v\n%s", err, raw)
		}
		return rows
	}
	want := [][]string{
		{"key_name", "fob_serial", "box", "bin", "location"},
		{"Nowhere", "D_1", "Loose", "1", ""},
		{"'@SUM(A1)", "A-1", "Lobby", "1", "'=Airport"},
		{`'=HYPERLINK("http://evil.example","x")`, "'-2", "Lobby", "2", "'=Airport"},
		{"Room, with comma", "C:1", `The "big" kiosk`, "1", "Station, north"},
		{"'+1 spare", "B.7", `The "big" kiosk`, "7", "Station, north"},
	}
	if got := sheet(tn.Owner); !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("sheet:\n%q\nwant\n%q", got, want)
	}
	t.Run("LimitedStaffGetTheirLocations", func(t *testing.T) {
		got := sheet(tn.staff(station.ID))
		if !slices.EqualFunc(got, [][]string{want[0], want[4], want[5]}, slices.Equal) {
			t.Fatalf("sheet of the station's staff: %q", got)
		}
	})
	t.Run("ErrVisitor", func(t *testing.T) {
		_, err := as(t, tenants.Principal{TenantID: tn.ID, UserID: uuid.New(), Role: tenants.RoleVisitor}, func(ctx context.Context) ([]byte, error) {
			return nil, svc.ExportKeys(ctx, &bytes.Buffer{})
		})
		wantErr(t, err, tenants.EForbidden)
	})
	t.Run("OtherTenantEmpty", func(t *testing.T) {
		if got := sheet(newTenant(t).Owner); len(got) != 1 {
			t.Fatalf("another tenant's sheet: %q", got)
		}
	})
}

func TestSafeCell(t *testing.T) {
	for in, want := range map[string]string{
		"":            "",
		"Room 12":     "Room 12",
		"=1+1":        "'=1+1",
		"+1":          "'+1",
		"-1":          "'-1",
		"@cmd":        "'@cmd",
		"\tx":         "'\tx",
		"\rx":         "'\rx",
		"a=b":         "a=b",
		"'quoted":     "'quoted",
		"Ünïcödé=1+1": "Ünïcödé=1+1",
	} {
		if got := inventory.SafeCell(in); got != want {
			t.Errorf("SafeCell(%q) = %q, want %q", in, got, want)
		}
	}
}

// Concurrent writers that pass the checks together still meet the unique
// indexes: one wins, the others get the same conflict, never an internal
// error.
func TestConcurrentCreatesConflict(t *testing.T) {
	tn := newTenant(t)
	b := box(t, tn.Owner, "Lobby", nil, 4)
	const n = 8
	errs := make(chan error, n)
	var start sync.WaitGroup
	start.Add(1)
	for i := range n {
		go func() {
			start.Wait()
			_, err := as(t, tn.Owner, func(ctx context.Context) (inventory.Key, error) {
				return svc.CreateKey(ctx, inventory.KeyInput{Name: "Room 1", FobSerial: "RACE-" + string(rune('A'+i)), BoxID: b.ID.String(), Bin: 1})
			})
			errs <- err
		}()
	}
	start.Done()
	won := 0
	for range n {
		err := <-errs
		switch {
		case err == nil:
			won++
		case tenants.ErrorCode(err) != tenants.EConflict:
			t.Errorf("a losing writer got %v, want a conflict", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d writers won the bin, want 1", won)
	}
}
