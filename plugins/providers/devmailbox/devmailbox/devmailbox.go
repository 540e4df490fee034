// Package devmailbox is the development provider: instead of sending a
// message it keeps it, as one JSON line in the file mailbox.jsonl of the
// directory named by the setting "dir", where a developer reads it (the app
// serves it at GET /dev/mailbox through Mailbox). It needs no account and no
// network, so `go run ./app` delivers codes out of the box. It stores bodies
// in clear and is refused in production.
//
// Writers append under an exclusive file lock and first read whatever other
// processes appended since their last look, so a message id is stored once
// however many times, and by however many processes, it is sent. One file
// rather than a file per message keeps a send at a few system calls: the
// notification pipeline is benchmarked through this provider.
package devmailbox

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/keyrelay/keyrelay/plugins/sdk"
)

// Name is the provider's name in its manifest.
const Name = "devmailbox"

// SettingDir is the setting naming the mailbox directory (an absolute path).
const SettingDir = "dir"

// FileName is the mailbox file inside the directory.
const FileName = "mailbox.jsonl"

// ErrNotFound is returned by Mailbox.Get for a message that is not there.
var ErrNotFound = errors.New("devmailbox: message not found")

// Record is one stored message.
type Record struct {
	ID                string      `json:"id"`
	TenantID          string      `json:"tenant_id"`
	Channel           sdk.Channel `json:"channel"`
	To                string      `json:"to"`
	Subject           string      `json:"subject,omitempty"`
	Text              string      `json:"text,omitempty"`
	HTML              string      `json:"html,omitempty"`
	ProviderMessageID string      `json:"provider_message_id"`
	CreatedAt         time.Time   `json:"created_at"`
}

// Provider stores messages; it implements sdk.Provider.
type Provider struct {
	now func() time.Time

	mu     sync.Mutex
	stores map[string]*store // by directory
}

// New returns the provider.
func New() *Provider { return &Provider{now: time.Now, stores: map[string]*store{}} }

func (p *Provider) Capabilities(context.Context) (sdk.Capabilities, error) {
	return sdk.Capabilities{Name: Name, Channels: []sdk.Channel{sdk.ChannelEmail, sdk.ChannelSMS}}, nil
}

func (p *Provider) CheckConfig(_ context.Context, settings map[string]string) error {
	dir, err := dirSetting(settings)
	if err != nil {
		return err
	}
	if _, err := p.store(dir); err != nil {
		return sdk.Permanent(err)
	}
	return nil
}

func (p *Provider) Send(ctx context.Context, msg sdk.Message) (sdk.Receipt, error) {
	dir, err := dirSetting(msg.Settings)
	if err != nil {
		return sdk.Receipt{}, err
	}
	if err := ctx.Err(); err != nil {
		return sdk.Receipt{}, err
	}
	st, err := p.store(dir)
	if err != nil {
		return sdk.Receipt{}, sdk.Temporary(err)
	}
	key := recordKey(msg.TenantID, msg.MessageID)
	rec := Record{
		ID:                msg.MessageID,
		TenantID:          msg.TenantID,
		Channel:           msg.Channel,
		To:                msg.To,
		Subject:           msg.Subject,
		Text:              msg.Text,
		HTML:              msg.HTML,
		ProviderMessageID: "mbx_" + hex.EncodeToString(key[:12]),
		CreatedAt:         p.now().UTC(),
	}
	stored, err := st.add(key, rec)
	if err != nil {
		return sdk.Receipt{}, sdk.Temporary(err)
	}
	return sdk.Receipt{ProviderMessageID: stored, Status: sdk.StatusDelivered}, nil
}

func (p *Provider) store(dir string) (*store, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st, ok := p.stores[dir]; ok {
		return st, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devmailbox: cannot create %s: %w", SettingDir, unwrapPath(err))
	}
	f, err := os.OpenFile(filepath.Join(dir, FileName), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("devmailbox: cannot open the mailbox in %s: %w", SettingDir, unwrapPath(err))
	}
	st := &store{f: f, seen: map[[32]byte]string{}}
	p.stores[dir] = st
	return st, nil
}

func dirSetting(settings map[string]string) (string, error) {
	dir := settings[SettingDir]
	switch {
	case dir == "":
		return "", sdk.Permanent(fmt.Errorf("devmailbox: setting %q is required", SettingDir))
	case !filepath.IsAbs(dir):
		// A plugin's working directory is whatever the host's was; a relative
		// path would land somewhere nobody looks.
		return "", sdk.Permanent(fmt.Errorf("devmailbox: setting %q must be an absolute path", SettingDir))
	}
	return filepath.Clean(dir), nil
}

// recordKey identifies a message; the tenant is part of it so two tenants'
// ids never collide.
func recordKey(tenantID, messageID string) [32]byte {
	return sha256.Sum256([]byte(tenantID + "\x00" + messageID))
}

// unwrapPath drops the path from a file system error: the error travels to
// the host and into message statuses, and the path says where codes are kept.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}

// store is one mailbox file held open for appending, with the index of the
// message ids in it.
type store struct {
	mu       sync.Mutex
	f        *os.File
	offset   int64               // bytes of the file indexed so far
	seen     map[[32]byte]string // record key → provider message id
	needsEOL bool                // the file ends in a line cut short by a crash
}

// add appends rec unless its key is stored already, and returns the provider
// message id of the stored record.
func (s *store) add(key [32]byte, rec Record) (string, error) {
	line, err := json.Marshal(rec)
	if err != nil {
		return "", fmt.Errorf("devmailbox: encode: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := lockFile(s.f, true); err != nil {
		return "", fmt.Errorf("devmailbox: lock: %w", unwrapPath(err))
	}
	defer unlockFile(s.f)
	if err := s.catchUp(); err != nil {
		return "", err
	}
	if id, ok := s.seen[key]; ok {
		return id, nil
	}
	buf := make([]byte, 0, len(line)+2)
	if s.needsEOL {
		buf = append(buf, '\n')
	}
	buf = append(append(buf, line...), '\n')
	n, err := s.f.Write(buf)
	s.offset += int64(n)
	if err != nil {
		return "", fmt.Errorf("devmailbox: append: %w", unwrapPath(err))
	}
	s.needsEOL = false
	s.seen[key] = rec.ProviderMessageID
	return rec.ProviderMessageID, nil
}

// catchUp indexes what was appended since the last look, by this process
// or another. Called with the file locked, so a line without its newline at
// the end can only be what a crashed writer left; it is skipped.
func (s *store) catchUp() error {
	info, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("devmailbox: stat: %w", unwrapPath(err))
	}
	if info.Size() <= s.offset {
		return nil
	}
	data := make([]byte, info.Size()-s.offset)
	if _, err := s.f.ReadAt(data, s.offset); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("devmailbox: read: %w", unwrapPath(err))
	}
	s.offset = info.Size()
	complete := data
	if i := bytes.LastIndexByte(data, '\n'); i < len(data)-1 {
		complete = data[:i+1]
		s.needsEOL = true
	}
	for _, rec := range parse(complete) {
		s.seen[recordKey(rec.TenantID, rec.ID)] = rec.ProviderMessageID
	}
	return nil
}

// parse decodes JSON lines, skipping any that do not decode.
func parse(data []byte) []Record {
	var out []Record
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		var rec Record
		if len(line) > 0 && json.Unmarshal(line, &rec) == nil && rec.ID != "" {
			out = append(out, rec)
		}
	}
	return out
}

// Mailbox reads what the provider stored in a directory. The app's
// development mailbox page is built on it.
type Mailbox struct {
	path string
}

// Open returns the mailbox kept in dir (the provider's "dir" setting). The
// directory need not exist yet: it is then empty.
func Open(dir string) *Mailbox { return &Mailbox{path: filepath.Join(dir, FileName)} }

// Query filters List. Zero fields match everything.
type Query struct {
	TenantID string
	To       string
	Channel  sdk.Channel
	// Limit caps the number of records; zero means no limit.
	Limit int
}

func (m *Mailbox) all() ([]Record, error) {
	f, err := os.Open(m.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("devmailbox: %w", err)
	}
	defer f.Close()
	// A shared lock keeps a writer from appending while we read, so the
	// last line is never half written.
	if err := lockFile(f, false); err != nil {
		return nil, fmt.Errorf("devmailbox: lock: %w", err)
	}
	data, err := io.ReadAll(f)
	unlockFile(f)
	if err != nil {
		return nil, fmt.Errorf("devmailbox: read: %w", err)
	}
	return parse(data), nil
}

// List returns the stored messages matching q, newest first.
func (m *Mailbox) List(ctx context.Context, q Query) ([]Record, error) {
	recs, err := m.all()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := recs[:0]
	for _, rec := range recs {
		if (q.TenantID != "" && rec.TenantID != q.TenantID) ||
			(q.To != "" && rec.To != q.To) ||
			(q.Channel != "" && rec.Channel != q.Channel) {
			continue
		}
		out = append(out, rec)
	}
	// The file is in append order; processes' clocks may disagree a little,
	// so sort by time and keep append order among equals.
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out, nil
}

// Get returns one message, or ErrNotFound.
func (m *Mailbox) Get(tenantID, messageID string) (Record, error) {
	recs, err := m.all()
	if err != nil {
		return Record{}, err
	}
	for _, rec := range recs {
		if rec.TenantID == tenantID && rec.ID == messageID {
			return rec, nil
		}
	}
	return Record{}, fmt.Errorf("%w: %s", ErrNotFound, messageID)
}
