package main

import (
	"bytes"
	"compress/zlib"
	"encoding/csv"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/google/uuid"
	"github.com/pquerna/otp/totp"
)

// This file holds the browser tests of issue #9: the lists' Older pages,
// the printed sheets, the live countdown of Resend Access Instructions,
// and the help center's three flows (security settings, managing a
// booking, preparing for an outage) walked end to end. The helpers of
// browser_test.go drive the browser; the few below add what these tests
// need: waiting for a page after a key press, reading the page's values,
// print media, and the text of a printed PDF.

// jsEval evaluates expr in the page and returns its value.
func jsEval[T any](b *browser, expr string, opts ...chromedp.EvaluateOption) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr, opts...))
	if err != nil {
		b.t.Fatalf("browser: %s: %v", expr, err)
	}
	return v
}

// follow runs act (a click, a key press) and waits for the page it leads
// to, the way submit does for a click.
func (b *browser) follow(act chromedp.Action[chromedp.Void], next string) {
	b.t.Helper()
	if _, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](`window.__leaving = true`)); err != nil {
		b.t.Fatal(err)
	}
	b.run(act)
	deadline := time.Now().Add(15 * time.Second)
	for {
		gone, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](`window.__leaving !== true && document.readyState !== "loading"`))
		if err == nil && gone {
			break
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("the action did not lead to a new page (waiting for %s)", next)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.run(chromedp.WaitVisible(chromedp.CSS(next)))
}

// pressEnter focuses sel and presses Enter, as someone on a keyboard does,
// and waits for the page it leads to.
func (b *browser) pressEnter(sel, next string) {
	b.t.Helper()
	b.settle()
	b.follow(chromedp.Steps(chromedp.Focus(chromedp.CSS(sel)), chromedp.KeyEvent(kb.Enter)), next)
}

// settle waits until htmx has had no request in flight, nor a swap under
// way, for 300 ms: a filter form fires on change and on submit, and the
// second swap replaces the nodes an action found after the first (CI saw
// "Could not find node with given id").
func (b *browser) settle() {
	b.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var quiet time.Time
	for time.Now().Before(deadline) {
		if jsEval[bool](b, `document.querySelector(".htmx-request, .htmx-swapping, .htmx-settling") !== null`) {
			quiet = time.Time{}
		} else if quiet.IsZero() {
			quiet = time.Now()
		} else if time.Since(quiet) >= 300*time.Millisecond {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.t.Fatal("htmx requests still under way after 15s")
}

// sees fails the test at once unless the element sel is on the page and
// its text contains want (wantText waits for the element to show up).
func (b *browser) sees(sel, want string) {
	b.t.Helper()
	got := jsEval[*string](b, `(() => { const e = document.querySelector(`+strconv.Quote(sel)+`); return e ? e.innerText : null })()`)
	if got == nil {
		b.t.Fatalf("no %s on the page, want one saying %q", sel, want)
	}
	if !strings.Contains(*got, want) {
		b.t.Fatalf("%s says %q, want it to contain %q", sel, *got, want)
	}
}

// texts is the trimmed text of each element sel matches, in page order.
func (b *browser) texts(sel string) []string {
	b.t.Helper()
	return jsEval[[]string](b, `[...document.querySelectorAll(`+strconv.Quote(sel)+`)].map(e => e.textContent.trim())`)
}

// count is how many elements sel matches.
func (b *browser) count(sel string) int {
	b.t.Helper()
	return jsEval[int](b, `document.querySelectorAll(`+strconv.Quote(sel)+`).length`)
}

// waitFor polls the JavaScript condition cond until it holds.
func (b *browser) waitFor(cond string, timeout time.Duration, what string) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](cond))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("waited %v for %s (%s): %v", timeout, what, cond, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// media makes the page's CSS see media ("print", or "" for the screen
// again), as the browser does when it prints.
func (b *browser) media(media string) {
	b.t.Helper()
	if _, err := chromedp.Call(b.ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{Media: media}); err != nil {
		b.t.Fatalf("emulate %q media: %v", media, err)
	}
}

// paper makes the page look as it does on A4 paper: print media, and the
// width of the sheet between its margins; false is the screen again.
func (b *browser) paper(on bool) {
	b.t.Helper()
	if on {
		b.media("print")
		b.run(chromedp.EmulateViewport(718, 1047))
		return
	}
	b.media("")
	b.run(chromedp.EmulateViewport(1280, 1000))
}

// wantTable fails unless the table at sel is laid out as a table: its
// head shown and repeated on each sheet, its cells side by side.
func (b *browser) wantTable(sel string) {
	b.t.Helper()
	q := strconv.Quote(sel)
	got := jsEval[string](b, `(() => { const t = document.querySelector(`+q+`);
		const cell = t.querySelector("tbody td"), head = t.querySelector("thead");
		return [getComputedStyle(t).display, getComputedStyle(head).display, getComputedStyle(cell).display].join(" ") })()`)
	if got != "table table-header-group table-cell" {
		b.t.Fatalf("%s is laid out as %q, want a table with its head", sel, got)
	}
}

// hidden lists the elements among sel that the page does not render
// (display none on them or an ancestor, visibility hidden, or no box).
func (b *browser) hidden(sel string) []string {
	b.t.Helper()
	return jsEval[[]string](b, `[...document.querySelectorAll(`+strconv.Quote(sel)+`)].filter(e =>
		getComputedStyle(e).visibility !== "visible" || e.getClientRects().length === 0).map(e => e.outerHTML.slice(0, 80))`)
}

// shown lists the elements among sel that the page renders.
func (b *browser) shown(sel string) []string {
	b.t.Helper()
	return jsEval[[]string](b, `[...document.querySelectorAll(`+strconv.Quote(sel)+`)].filter(e =>
		getComputedStyle(e).visibility === "visible" && e.getClientRects().length > 0).map(e => e.outerHTML.slice(0, 80))`)
}

// printPDF prints the page as the browser's print dialog would (A4) and
// returns the PDF's text and its number of pages.
func (b *browser) printPDF(name string) (string, int) {
	b.t.Helper()
	pdf, err := chromedp.Run(b.ctx, chromedp.PrintToPDF(chromedp.PDFPaper(chromedp.PaperA4)))
	if err != nil {
		b.t.Fatalf("print to PDF: %v", err)
	}
	if len(pdf) < 1000 || !bytes.HasPrefix(pdf, []byte("%PDF-")) {
		b.t.Fatalf("the printed page is not a PDF (%d bytes)", len(pdf))
	}
	b.saveArtifact(name+".pdf", pdf)
	text, pages := pdfText(b.t, pdf)
	if pages == 0 || strings.TrimSpace(text) == "" {
		b.t.Fatalf("the PDF has %d pages and the text %q", pages, text)
	}
	return text, pages
}

func (b *browser) saveArtifact(name string, data []byte) {
	b.t.Helper()
	if err := os.WriteFile(filepath.Join(b.artifacts, name), data, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// pdfText reads back the text of a PDF that Chromium printed (Skia's
// writer: objects one after the other, Flate streams, Type 0 fonts with
// a ToUnicode map, text shown with hex strings): each run of text on a
// line of its own, page after page. It is no general PDF reader; it fails
// the test on what it does not know rather than guess.
func pdfText(t *testing.T, pdf []byte) (string, int) {
	t.Helper()
	type object struct {
		dict   string
		stream []byte
	}
	objs := map[string]object{}
	header := regexp.MustCompile(`(\d+) 0 obj\b`)
	length := regexp.MustCompile(`/Length (\d+)\b`)
	for p := 0; ; {
		loc := header.FindSubmatchIndex(pdf[p:])
		if loc == nil {
			break
		}
		num := string(pdf[p+loc[2] : p+loc[3]])
		body := p + loc[1]
		end := bytes.Index(pdf[body:], []byte("endobj"))
		st := bytes.Index(pdf[body:], []byte("stream"))
		if end < 0 {
			t.Fatalf("PDF object %s has no end", num)
		}
		o := object{dict: string(pdf[body : body+end])}
		if st >= 0 && st < end {
			o.dict = string(pdf[body : body+st])
			m := length.FindStringSubmatch(o.dict)
			if m == nil {
				t.Fatalf("PDF stream %s has no direct /Length: %s", num, o.dict)
			}
			n, _ := strconv.Atoi(m[1])
			start := body + st + len("stream")
			for start < len(pdf) && (pdf[start] == '\r' || pdf[start] == '\n') {
				start++
			}
			if start+n > len(pdf) {
				t.Fatalf("PDF stream %s runs past the file", num)
			}
			o.stream = pdf[start : start+n]
			if strings.Contains(o.dict, "/FlateDecode") {
				zr, err := zlib.NewReader(bytes.NewReader(o.stream))
				if err != nil {
					t.Fatalf("PDF stream %s: %v", num, err)
				}
				if o.stream, err = io.ReadAll(zr); err != nil {
					t.Fatalf("PDF stream %s: %v", num, err)
				}
			}
			end = bytes.Index(pdf[start+n:], []byte("endobj")) + start + n - body
		}
		objs[num] = o
		p = body + end + len("endobj")
	}
	if len(objs) == 0 {
		t.Fatal("no objects in the PDF")
	}
	ref := func(dict, key string) string {
		m := regexp.MustCompile(regexp.QuoteMeta(key) + `\s+(\d+) 0 R`).FindStringSubmatch(dict)
		if m == nil {
			return ""
		}
		return m[1]
	}
	utf16be := func(h string) string {
		raw, err := hex.DecodeString(h)
		if err != nil || len(raw)%2 != 0 {
			t.Fatalf("PDF ToUnicode value <%s>", h)
		}
		u := make([]uint16, len(raw)/2)
		for i := range u {
			u[i] = uint16(raw[2*i])<<8 | uint16(raw[2*i+1])
		}
		return string(utf16.Decode(u))
	}
	cmaps := map[string]map[uint16]string{}
	cmapOf := func(fontObj string) map[uint16]string {
		if m, ok := cmaps[fontObj]; ok {
			return m
		}
		m := map[uint16]string{}
		cm, ok := objs[ref(objs[fontObj].dict, "/ToUnicode")]
		if !ok {
			t.Fatalf("PDF font %s has no ToUnicode map", fontObj)
		}
		s := string(cm.stream)
		for _, blk := range regexp.MustCompile(`(?s)beginbfchar(.*?)endbfchar`).FindAllStringSubmatch(s, -1) {
			for _, p := range regexp.MustCompile(`<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>`).FindAllStringSubmatch(blk[1], -1) {
				code, _ := strconv.ParseUint(p[1], 16, 16)
				m[uint16(code)] = utf16be(p[2])
			}
		}
		for _, blk := range regexp.MustCompile(`(?s)beginbfrange(.*?)endbfrange`).FindAllStringSubmatch(s, -1) {
			for _, r := range regexp.MustCompile(`<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*(<[0-9A-Fa-f]+>|\[[^\]]*\])`).FindAllStringSubmatch(blk[1], -1) {
				lo, _ := strconv.ParseUint(r[1], 16, 16)
				hi, _ := strconv.ParseUint(r[2], 16, 16)
				if strings.HasPrefix(r[3], "[") {
					for i, d := range regexp.MustCompile(`<([0-9A-Fa-f]+)>`).FindAllStringSubmatch(r[3], -1) {
						m[uint16(lo)+uint16(i)] = utf16be(d[1])
					}
					continue
				}
				first := []rune(utf16be(strings.Trim(r[3], "<>")))
				for c := lo; c <= hi; c++ {
					rs := slices.Clone(first)
					rs[len(rs)-1] += rune(c - lo)
					m[uint16(c)] = string(rs)
				}
			}
		}
		cmaps[fontObj] = m
		return m
	}
	// Pages in the order of the page tree.
	var pages []string
	var walk func(num string)
	walk = func(num string) {
		d := objs[num].dict
		if regexp.MustCompile(`/Type\s*/Page\b`).MatchString(d) {
			pages = append(pages, num)
			return
		}
		if kids := regexp.MustCompile(`(?s)/Kids\s*\[(.*?)\]`).FindStringSubmatch(d); kids != nil {
			for _, k := range regexp.MustCompile(`(\d+) 0 R`).FindAllStringSubmatch(kids[1], -1) {
				walk(k[1])
			}
		}
	}
	for _, o := range objs {
		if regexp.MustCompile(`/Type\s*/Catalog\b`).MatchString(o.dict) {
			walk(ref(o.dict, "/Pages"))
		}
	}
	ops := regexp.MustCompile(`(?s)/([^\s/<>\[\]()]+)\s+[-\d.]+\s+Tf|<([0-9A-Fa-f\s]*)>\s*Tj|\[([^\]]*)\]\s*TJ|\bET\b`)
	hexes := regexp.MustCompile(`<([0-9A-Fa-f\s]*)>`)
	var out strings.Builder
	for _, pg := range pages {
		d := objs[pg].dict
		if r := ref(d, "/Resources"); r != "" {
			d += objs[r].dict
		}
		fonts := map[string]string{}
		if fd := regexp.MustCompile(`(?s)/Font\s*<<(.*?)>>`).FindStringSubmatch(d); fd != nil {
			for _, f := range regexp.MustCompile(`/([^\s/]+)\s+(\d+) 0 R`).FindAllStringSubmatch(fd[1], -1) {
				fonts[f[1]] = f[2]
			}
		} else if r := ref(d, "/Font"); r != "" {
			for _, f := range regexp.MustCompile(`/([^\s/]+)\s+(\d+) 0 R`).FindAllStringSubmatch(objs[r].dict, -1) {
				fonts[f[1]] = f[2]
			}
		}
		var contents []string
		if c := ref(d, "/Contents"); c != "" {
			contents = []string{c}
		} else if arr := regexp.MustCompile(`(?s)/Contents\s*\[(.*?)\]`).FindStringSubmatch(d); arr != nil {
			for _, c := range regexp.MustCompile(`(\d+) 0 R`).FindAllStringSubmatch(arr[1], -1) {
				contents = append(contents, c[1])
			}
		}
		var cmap map[uint16]string
		show := func(h string) {
			raw, err := hex.DecodeString(strings.Join(strings.Fields(h), ""))
			if err != nil || cmap == nil {
				t.Fatalf("PDF text <%s> without a font or not hex: %v", h, err)
			}
			for i := 0; i+1 < len(raw); i += 2 {
				out.WriteString(cmap[uint16(raw[i])<<8|uint16(raw[i+1])])
			}
		}
		for _, c := range contents {
			for _, m := range ops.FindAllStringSubmatch(string(objs[c].stream), -1) {
				switch {
				case m[1] != "":
					font, ok := fonts[m[1]]
					if !ok {
						t.Fatalf("PDF page %s uses the unknown font %s", pg, m[1])
					}
					cmap = cmapOf(font)
				case strings.HasSuffix(m[0], "Tj"):
					show(m[2])
				case strings.HasSuffix(m[0], "TJ"):
					for _, h := range hexes.FindAllStringSubmatch(m[3], -1) {
						show(h[1])
					}
				default: // ET: the end of a run of text
					out.WriteString("\n")
				}
			}
		}
		out.WriteString("\f")
	}
	// The fonts' ligatures map to their own code points.
	lig := strings.NewReplacer("\ufb00", "ff", "\ufb01", "fi", "\ufb02", "fl", "\ufb03", "ffi", "\ufb04", "ffl")
	return lig.Replace(out.String()), len(pages)
}

// squeeze drops the white space in s, so that text a PDF or a page spaced
// out (letter-spacing, line breaks) compares with what was typed.
func squeeze(s string) string { return strings.Join(strings.Fields(s), "") }

// signIn signs in through the pages like signInUI, but reads the sign-in
// code where the relay takes it from, the tenant's outbox: these tests run
// no worker, so that another test process's workers on the shared Redis
// queues cannot hold up their messages.
func (b *browser) signIn(s *server, tenant uuid.UUID, email, password string) {
	b.t.Helper()
	b.visit("/login?email=" + url.QueryEscape(email))
	b.run(chromedp.SetValue(chromedp.CSS("#email"), email), chromedp.SendKeys(chromedp.CSS("#password"), password))
	b.submit(`form[action="/login"] button`, `#code, nav.menu`)
	if b.count("#code") == 1 {
		b.run(chromedp.SendKeys(chromedp.CSS("#code"), s.loginCode(b.t, tenant)))
		b.submit(`form[action="/login/verify"] button`, `nav.menu`)
	}
}

// loginCode is the newest sign-in code in the tenant's outbox.
func (s *server) loginCode(t *testing.T, tenant uuid.UUID) string {
	t.Helper()
	for _, r := range s.outboxOf(t, tenant) {
		if r.Kind == "login_code" {
			return r.Data["code"]
		}
	}
	t.Fatal("no sign-in code in the outbox")
	return ""
}

// TestBrowserOlderPages: the bookings list, the messages and the audit log
// show 50 rows a page, newest first; "Older" (followed with the keyboard
// here) goes on after the page's last row with the page's filters kept, up
// to the oldest, and no row is shown twice or left out; "Newest" comes
// back; a page past the oldest row says so.
func TestBrowserOlderPages(t *testing.T) {
	s := startServer(t)
	w := bkSetup(t, s, "Europe/Paris")
	keyA, keyB := w.key(t, "Van 40"), w.key(t, "Van 41")

	// 53 ongoing accesses on Van 40 for "Pager" visitors by SMS, with 3 on
	// Van 41 for "Other" visitors by email in between (one among the oldest,
	// so that an Older page that drops a filter shows it): 56 bookings.
	type made struct{ id, name string }
	var created []made
	pager := 0
	for i := 1; i <= 56; i++ {
		body := bkBody(keyA, bkPhone(), time.Now().Add(-time.Hour), time.Time{})
		body["kind"] = "ongoing"
		delete(body, "ends_at")
		var name string
		if i == 2 || i == 27 || i == 52 {
			name = fmt.Sprintf("Other %02d", i)
			body["key_id"], body["notify_via"] = keyB.String(), "email"
			body["visitor"] = map[string]any{"name": name, "email": fmt.Sprintf("other-%02d-%s@example.com", i, uuid.NewString()[:6])}
		} else {
			pager++
			name = fmt.Sprintf("Pager %02d", pager)
			body["visitor"].(map[string]any)["name"] = name
		}
		id := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", body).JSON(t)["id"].(string)
		created = append(created, made{id, name})
	}
	newest := slices.Clone(created)
	slices.Reverse(newest)
	names := func(ms []made, keep func(made) bool) []string {
		var out []string
		for _, m := range ms {
			if keep == nil || keep(m) {
				out = append(out, m.name)
			}
		}
		return out
	}
	isPager := func(m made) bool { return strings.HasPrefix(m.name, "Pager") }

	b := newBrowser(t, s.url)
	b.signIn(s, w.ID, w.Email, w.Password)
	rows := func() []string { return b.texts("#booking-list tbody tr td:first-child") }

	t.Run("Bookings", func(t *testing.T) {
		b.t = t
		b.visit("/bookings")
		if got, want := rows(), names(newest, nil)[:50]; !slices.Equal(got, want) {
			t.Fatalf("first page %v, want the 50 newest %v", got, want)
		}
		if b.count("#newest") != 0 {
			t.Fatal("the first page links to the newest page")
		}
		if ps := b.a11yProblems(); len(ps) > 0 {
			t.Errorf("/bookings: %v", ps)
		}
		b.pressEnter("#older", "#booking-list")
		if !strings.Contains(b.currentURL(), "cursor="+newest[49].id) {
			t.Fatalf("Older leads to %s, want the cursor after %s", b.currentURL(), newest[49].id)
		}
		if got, want := rows(), names(newest, nil)[50:]; !slices.Equal(got, want) {
			t.Fatalf("older page %v, want %v", got, want)
		}
		if b.count("#older") != 0 {
			t.Fatal("the page of the oldest bookings has an Older link")
		}
		b.shot("01-bookings-older")
		b.pressEnter("#newest", "#booking-list")
		if got := rows(); len(got) != 50 || got[0] != newest[0].name {
			t.Fatalf("Newest leads to %v", got)
		}

		// The filter form (htmx swaps the list in), then Older with the
		// filter kept: the 3 oldest Pagers and no Other.
		b.run(chromedp.SendKeys(chromedp.CSS("#f-visitor"), "Pager"), chromedp.Click(chromedp.CSS(`form[role=search] button`)))
		b.waitFor(`[...document.querySelectorAll("#booking-list tbody tr td:first-child")].every(td => td.textContent.includes("Pager")) &&
			document.querySelector("#older") !== null && document.querySelector("#older").href.includes("visitor=Pager")`, 15*time.Second, "the filtered list")
		if got, want := rows(), names(newest, isPager)[:50]; !slices.Equal(got, want) {
			t.Fatalf("filtered first page %v, want %v", got, want)
		}
		b.pressEnter("#older", "#booking-list")
		if got, want := rows(), names(newest, isPager)[50:]; !slices.Equal(got, want) {
			t.Fatalf("filtered older page %v, want the 3 oldest Pagers %v", got, want)
		}
		if v := jsEval[string](b, `document.getElementById("f-visitor").value`); v != "Pager" {
			t.Fatalf("the older page's filter form says %q", v)
		}

		// The key filter (from a link) is kept too.
		b.visit("/bookings?key_id=" + keyA.String())
		b.pressEnter("#older", "#booking-list")
		if got, want := rows(), names(newest, isPager)[50:]; !slices.Equal(got, want) {
			t.Fatalf("older page of Van 40's bookings %v, want %v", got, want)
		}
		b.visit("/bookings?key_id=" + keyB.String())
		if got := rows(); len(got) != 3 || b.count("#older") != 0 {
			t.Fatalf("Van 41's bookings %v", got)
		}

		// Past the oldest booking.
		b.visit("/bookings?cursor=" + created[0].id)
		b.sees("#booking-list .empty", "No older bookings")
		b.pressEnter("#newest", "#booking-list tbody")
		if got := rows(); len(got) != 50 {
			t.Fatalf("Newest from past the end shows %d bookings", len(got))
		}
	})

	t.Run("Messages", func(t *testing.T) {
		b.t = t
		all := s.outboxOf(t, w.ID) // newest first, as the page
		var want, wantSMS []string
		for _, r := range all {
			want = append(want, r.Kind+" "+r.Recipient)
			if r.Channel == "sms" {
				wantSMS = append(wantSMS, r.Kind+" "+r.Recipient)
			}
		}
		if len(want) <= 50 || len(want) > 100 || len(wantSMS) <= 50 || len(wantSMS) == len(want) {
			t.Fatalf("%d messages, %d by SMS: the test needs two pages of each and some email", len(want), len(wantSMS))
		}
		page := func() []string {
			return jsEval[[]string](b, `[...document.querySelectorAll("main tbody tr")].map(r => r.cells[1].textContent.trim() + " " + r.cells[2].textContent.trim())`)
		}
		b.visit("/messages")
		first := page()
		b.pressEnter("#older", "main h1")
		second := page()
		if got := append(first, second...); !slices.Equal(got, want) || len(first) != 50 {
			t.Fatalf("the messages' pages show %d + %d rows %v, want %v", len(first), len(second), got, want)
		}
		if b.count("#older") != 0 {
			t.Fatal("the last page of messages has an Older link")
		}
		if ps := b.a11yProblems(); len(ps) > 0 {
			t.Errorf("/messages: %v", ps)
		}
		b.shot("02-messages-older")

		// Filtered by channel: the filter stays on the older page.
		b.visit("/messages?channel=sms")
		first = page()
		b.pressEnter("#older", "main h1")
		if !strings.Contains(b.currentURL(), "channel=sms") {
			t.Fatalf("Older lost the filter: %s", b.currentURL())
		}
		if got := append(first, page()...); !slices.Equal(got, wantSMS) {
			t.Fatalf("the SMS pages show %v, want %v", got, wantSMS)
		}
		b.pressEnter("#newest", "main tbody")
		if got := page(); !slices.Equal(got, wantSMS[:50]) {
			t.Fatalf("Newest shows %v", got)
		}
	})

	t.Run("Audit", func(t *testing.T) {
		b.t = t
		b.visit("/audit")
		b.run(chromedp.SendKeys(chromedp.CSS("#action"), "booking.created"))
		b.submit(`form[role=search] button`, `main tbody`)
		targets := func() []string { return b.texts("main tbody tr td:nth-child(4)") }
		first := targets()
		if b.count("#newest") != 0 {
			t.Fatal("the first page of the audit log links to the newest page")
		}
		b.pressEnter("#older", "main h1")
		if !strings.Contains(b.currentURL(), "action=booking.created") {
			t.Fatalf("Older lost the action filter: %s", b.currentURL())
		}
		second := targets()
		var want []string
		for _, m := range newest {
			want = append(want, "booking:"+m.id)
		}
		if got := append(first, second...); len(first) != 50 || !slices.Equal(got, want) {
			t.Fatalf("the audit pages show %d + %d entries %v, want each booking once, newest first: %v", len(first), len(second), got, want)
		}
		for _, a := range b.texts("main tbody tr td:nth-child(3)") {
			if a != "booking.created" {
				t.Fatalf("the older page of booking.created lists %q", a)
			}
		}
		if b.count("#older") != 0 {
			t.Fatal("the last page of the audit log has an Older link")
		}
		if ps := b.a11yProblems(); len(ps) > 0 {
			t.Errorf("/audit: %v", ps)
		}
		b.shot("03-audit-older")
		// Audit ids are not booking ids: past the oldest entry there is none.
		b.visit("/audit?action=booking.created&cursor=00000000-0000-7000-8000-000000000000")
		b.sees("main .empty", "No older entries")
		b.pressEnter("#newest", "main tbody")
		if got := targets(); !slices.Equal(got, want[:50]) {
			t.Fatalf("Newest entries %v", got)
		}
	})
}

// TestBrowserPrintSheets walks the help center's "preparing for an
// outage" to paper: from Boxes to the box's offline backup codes sheet,
// printed, then the key data sheet, printed. In print media the menus,
// buttons and links are gone and every code, key and fob serial shows;
// the PDF the browser prints holds them all and nothing of the menus.
// An MS3 box says it has no offline mode and points to the key data sheet.
func TestBrowserPrintSheets(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 1, 2, 3) // an MS5 with 12 bins, provisioned
	o := f.Owner
	loc := o.expect(t, 201, "POST", "/api/v1/locations", map[string]any{"name": "Station"}).JSON(t)["id"].(string)
	ms3 := o.expect(t, 201, "POST", "/api/v1/boxes", map[string]any{"name": "Station box", "model": "MS3", "timezone": "Europe/Paris", "bins": 4, "location_id": loc}).JSON(t)["id"].(string)
	o.expect(t, 201, "POST", "/api/v1/keys", map[string]any{"name": "Van 7", "fob_serial": "FOB-VAN-7", "box_id": ms3, "bin": 2})

	b := newBrowser(t, s.url)
	b.signIn(s, f.ID, f.Email, f.Password)

	// Boxes → the box → Preparing for an outage → the sheet.
	b.submit(`nav.menu a[href="/boxes"]`, `main tbody`)
	b.submit(`main tbody a[href="/boxes/`+st.boxID+`"]`, `#off-h`)
	b.sees(`section[aria-labelledby="off-h"]`, "key data sheet")
	b.submit("#offline-codes-link", "#offline-codes")
	type codeRow struct{ Bin, Code, Key, Fob string }
	sheet := jsEval[[]codeRow](b, `[...document.querySelectorAll("#offline-codes tbody tr")].map(r => ({Bin: r.cells[0].textContent.trim(),
		Code: r.cells[1].textContent.trim(), Key: r.cells[2].textContent.trim(), Fob: r.cells[3].textContent.trim()}))`)
	if len(sheet) != 13 || sheet[0].Bin != "All bins" {
		t.Fatalf("the sheet has %v, want the open-all code and 12 bins", sheet)
	}
	for _, r := range sheet {
		if len(r.Code) < 6 {
			t.Fatalf("bin %s has the code %q", r.Bin, r.Code)
		}
	}
	for n, fob := range st.fobs {
		if r := sheet[n]; r.Key != fmt.Sprintf("Car %d", n) || r.Fob != fob {
			t.Fatalf("bin %d reads %+v, want Car %d with %s", n, r, n, fob)
		}
	}
	// The sheet's CSV link gives the same codes, with the page's session.
	raw := jsEval[string](b, `fetch("/api/v1/boxes/`+st.boxID+`/offline-codes?format=csv").then(r => r.ok ? r.text() : "status " + r.status)`, chromedp.EvalAwaitPromise)
	recs, err := csv.NewReader(strings.NewReader(raw)).ReadAll()
	if err != nil || len(recs) != 14 {
		t.Fatalf("the CSV sheet: %v %q", err, raw)
	}
	for i, r := range sheet {
		if recs[i+1][3] != r.Code {
			t.Fatalf("row %d: the CSV says %q, the printable sheet %q", i, recs[i+1][3], r.Code)
		}
	}

	// On screen: the Print button and the way back. Printed: neither, and
	// every row with its code.
	if got := b.shown(".no-print"); len(got) == 0 {
		t.Fatal("the sheet shows no Print button on screen")
	}
	b.paper(true)
	if !jsEval[bool](b, `matchMedia("print").matches`) {
		t.Fatal("print media is not emulated")
	}
	if got := b.shown(`#print, .no-print, .no-print a, nav, .skip`); len(got) != 0 {
		t.Fatalf("printed, the sheet still shows %v", got)
	}
	if got := b.hidden(`h1, #offline-codes, #offline-codes th, #offline-codes tbody tr, #offline-codes code`); len(got) != 0 {
		t.Fatalf("printed, the sheet hides %v", got)
	}
	b.wantTable("#offline-codes")
	b.shot("01-offline-codes-print")
	b.paper(false)
	text, pages := b.printPDF("01-offline-codes")
	flat := squeeze(text)
	for _, r := range sheet {
		if !strings.Contains(flat, squeeze(r.Code)) {
			t.Fatalf("the printed sheet lacks the code %s of bin %s: %q", r.Code, r.Bin, text)
		}
	}
	for n, fob := range st.fobs {
		if !strings.Contains(flat, squeeze(fob)) || !strings.Contains(flat, fmt.Sprintf("Car%d", n)) {
			t.Fatalf("the printed sheet lacks Car %d and its fob %s", n, fob)
		}
	}
	if !strings.Contains(flat, "Offlinebackupcodes") || strings.Contains(flat, "Backtothebox") || strings.Contains(flat, "Print") {
		t.Fatalf("the printed sheet has the wrong parts: %q", text)
	}
	if pages != 1 {
		t.Errorf("a 12-bin box's sheet prints on %d pages, want 1", pages)
	}

	// The Print button, from the keyboard, opens the browser's print.
	jsEval[bool](b, `window.__prints = 0; window.print = () => { window.__prints++; }; true`)
	b.run(chromedp.Focus(chromedp.CSS("#print")), chromedp.KeyEvent(kb.Enter))
	b.waitFor(`window.__prints === 1`, 5*time.Second, "Print to open the print dialog")

	// The download is in the audit log.
	b.visit("/audit?action=box.offline_codes_downloaded")
	if n := b.count("main tbody tr"); n < 2 {
		t.Fatalf("%d audited downloads of the sheet, want the page and the CSV", n)
	}

	// Back at the box: the key data sheet, from the outage section.
	b.visit("/boxes/" + st.boxID)
	b.submit("#outage-key-sheet-link", "#key-sheet")
	if ps := b.a11yProblems(); len(ps) > 0 {
		t.Errorf("/keys/sheet: %v", ps)
	}
	type keyRow struct{ Key, Fob, Box, Bin, Location string }
	keys := jsEval[[]keyRow](b, `[...document.querySelectorAll("#key-sheet tbody tr")].map(r => ({Key: r.cells[0].textContent.trim(),
		Fob: r.cells[1].textContent.trim(), Box: r.cells[2].textContent.trim(), Bin: r.cells[3].textContent.trim(), Location: r.cells[4].textContent.trim()}))`)
	// The CSV export (the Keys page's download) lists the same rows in the
	// same order.
	raw = jsEval[string](b, `fetch(document.getElementById("key-sheet-csv").href).then(r => r.ok ? r.text() : "status " + r.status)`, chromedp.EvalAwaitPromise)
	recs, err = csv.NewReader(strings.NewReader(raw)).ReadAll()
	if err != nil || len(recs) != len(keys)+1 || len(keys) != 4 {
		t.Fatalf("the key data sheet shows %v; the CSV %q (%v)", keys, raw, err)
	}
	for i, k := range keys {
		loc := k.Location
		if loc == "—" {
			loc = ""
		}
		if got := []string{k.Key, k.Fob, k.Box, k.Bin, loc}; !slices.Equal(got, recs[i+1]) {
			t.Fatalf("row %d of the sheet %v, of the CSV %v", i, got, recs[i+1])
		}
	}
	if keys[3].Key != "Van 7" || keys[3].Location != "Station" {
		t.Fatalf("the sheet is not ordered by location, box and bin: %v", keys)
	}
	// On screen the dashboard's menu is there; printed it is not.
	if got := b.shown("nav.menu, header.top"); len(got) != 2 {
		t.Fatalf("on screen the key data sheet shows %v of the menu and header", got)
	}
	b.shot("02-key-sheet-screen")
	b.paper(true)
	if got := b.shown(`nav.menu, nav.menu a, header.top, .skip, #print, .no-print, button`); len(got) != 0 {
		t.Fatalf("printed, the key data sheet still shows %v", got)
	}
	if got := b.hidden(`h1, #key-sheet th, #key-sheet tbody tr, #key-sheet code`); len(got) != 0 {
		t.Fatalf("printed, the key data sheet hides %v", got)
	}
	b.wantTable("#key-sheet")
	if x := jsEval[float64](b, `document.getElementById("key-sheet").getBoundingClientRect().left`); x > 100 {
		t.Fatalf("printed, the sheet starts %vpx from the left: the menu's column is still there", x)
	}
	b.shot("03-key-sheet-print")
	b.paper(false)
	text, _ = b.printPDF("02-key-sheet")
	flat = squeeze(text)
	for _, k := range keys {
		if !strings.Contains(flat, squeeze(k.Key)) || !strings.Contains(flat, squeeze(k.Fob)) {
			t.Fatalf("the printed key data sheet lacks %s (%s): %q", k.Key, k.Fob, text)
		}
	}
	for _, menu := range []string{"Aliascodes", "Signout", "Skiptocontent", "DownloadasCSV"} {
		if strings.Contains(flat, menu) {
			t.Fatalf("the printed key data sheet shows %q: %q", menu, text)
		}
	}

	// The Keys page links to it too; an MS3 has no offline mode and says
	// what to print instead.
	b.visit("/keys")
	b.submit("#key-sheet-link", "#key-sheet")
	b.visit("/boxes/" + ms3)
	b.sees("#no-offline", "no offline mode")
	if b.count("#offline-codes-link") != 0 {
		t.Fatal("an MS3's page offers offline backup codes")
	}
	b.submit(`#no-offline a[href="/keys/sheet"]`, "#key-sheet")
}

// TestBrowserResendCountdown: Resend Access Instructions is disabled for
// the hour after the instructions went out and shows the time left; the
// time counts down live and the button comes on by itself when the hour is
// over, without a reload; pressing it then sends the instructions again
// (a second outbox message, listed on Messages). The server stays the
// judge: a button enabled early by hand is refused (429) and sends nothing.
func TestBrowserResendCountdown(t *testing.T) {
	const resendAfter = time.Hour // API.md: once an hour
	s := startServer(t)
	w := bkSetup(t, s, "Europe/Paris")
	phone := bkPhone()
	id := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(w.key(t, "Van 9"), phone, time.Now().Add(-10*time.Minute), time.Now().Add(3*time.Hour))).JSON(t)["id"].(string)
	instructions := func() int { return len(w.messagesTo(t, "access_instructions", phone)) }
	if n := instructions(); n != 1 {
		t.Fatalf("%d instructions after the booking, want 1", n)
	}

	b := newBrowser(t, s.url)
	b.signIn(s, w.ID, w.Email, w.Password)
	b.visit("/bookings/" + id)

	// Just sent: disabled, with the time left, described to assistive
	// technology, and ticking.
	if !jsEval[bool](b, `document.getElementById("resend").disabled`) {
		t.Fatal("Resend Access Instructions is enabled right after the instructions went out")
	}
	b.waitFor(`/^59 minutes( \d+ seconds?)?$/.test(document.getElementById("resend-left").textContent)`, 5*time.Second, "the countdown to show minutes and seconds")
	if got := jsEval[string](b, `document.getElementById("resend").getAttribute("aria-describedby")`); got != "resend-why" {
		t.Fatalf("the disabled button is described by %q", got)
	}
	if got := jsEval[string](b, `document.getElementById("resend-status").getAttribute("aria-live")`); got != "polite" {
		t.Fatalf("the countdown's announcements are aria-live=%q", got)
	}
	left := jsEval[int](b, `+document.getElementById("resend").dataset.resendLeft`)
	b.waitFor(fmt.Sprintf(`+document.getElementById("resend").dataset.resendLeft < %d`, left), 5*time.Second, "the countdown to tick")
	b.sees("#resend-why", "You can resend in 59 minutes")
	if ps := b.a11yProblems(); len(ps) > 0 {
		t.Errorf("About Booking: %v", ps)
	}
	b.shot("01-resend-disabled")

	// Enabled by hand and pressed early: refused by the server, nothing
	// sent, the countdown back.
	jsEval[bool](b, `document.getElementById("resend").disabled = false; true`)
	b.submit("#resend", "#form-error")
	b.sees("#form-error", "resend in")
	if n := instructions(); n != 1 {
		t.Fatalf("%d instructions after an early resend, want 1", n)
	}
	if !jsEval[bool](b, `document.getElementById("resend").disabled && document.getElementById("resend-left") !== null`) {
		t.Fatal("after the refusal the button is enabled or the countdown gone")
	}

	// An hour later but for a few seconds (the clock is the database's
	// record of when the instructions went out).
	ready := time.Now().Add(6 * time.Second)
	ownerExec(t, "UPDATE bookings SET sent_at = $3 WHERE tenant_id = $1 AND id = $2", w.ID, uuid.MustParse(id), ready.Add(-resendAfter))
	b.visit("/bookings/" + id)
	jsEval[bool](b, `window.__samePage = true`)
	if !jsEval[bool](b, `document.getElementById("resend").disabled`) {
		t.Fatal("Resend Access Instructions is enabled before the hour is over")
	}
	b.sees("#resend-left", "second")
	seen := map[string]bool{}
	const leftIfDisabled = `(() => { const l = document.getElementById("resend-left");
		return document.getElementById("resend").disabled ? (l ? l.textContent : "no countdown") : "" })()`
	for shown := jsEval[string](b, leftIfDisabled); shown != ""; shown = jsEval[string](b, leftIfDisabled) {
		seen[shown] = true
		if time.Now().After(ready.Add(10 * time.Second)) {
			t.Fatalf("the button is still disabled %v after the hour ended; the countdown showed %v", time.Since(ready), seen)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if early := time.Until(ready); early > 500*time.Millisecond {
		t.Fatalf("the button came on %v before the hour was over", early)
	}
	if len(seen) < 3 {
		t.Fatalf("the countdown showed %v: it did not count down", seen)
	}
	if !jsEval[bool](b, `window.__samePage === true`) {
		t.Fatal("the page was reloaded to enable the button")
	}
	b.sees("#resend-why", "you can resend the access instructions now")
	if got := jsEval[string](b, `document.getElementById("resend-status").textContent`); !strings.Contains(got, "available now") {
		t.Fatalf("the live region says %q", got)
	}
	b.shot("02-resend-enabled")

	// Pressed from the keyboard: sent again, by the same channel, and the
	// hour starts again.
	b.pressEnter("#resend", ".flash")
	b.sees(".flash", "Access instructions sent again")
	if n := instructions(); n != 2 {
		t.Fatalf("%d instructions after the resend, want 2", n)
	}
	sent := w.messagesTo(t, "access_instructions", phone)
	if len(sent) != 2 || sent[0].Channel != "sms" || sent[0].Data["code"] == "" || sent[0].Data["code"] != sent[1].Data["code"] {
		t.Fatalf("the instructions after the resend: %+v, want the same again by SMS", sent)
	}
	if !jsEval[bool](b, `document.getElementById("resend").disabled`) {
		t.Fatal("Resend Access Instructions is enabled right after the resend")
	}
	b.waitFor(`document.getElementById("resend-left").textContent.startsWith("59 minutes")`, 5*time.Second, "a new hour's countdown")
	b.sees("#booking-status", "Active")

	// Messages lists both, to the visitor, by SMS.
	b.visit("/messages")
	if got := jsEval[[]string](b, `[...document.querySelectorAll("main tbody tr")]
		.filter(r => r.cells[2].textContent.trim() === `+strconv.Quote(phone)+` && r.cells[1].textContent.trim() === "access_instructions")
		.map(r => r.cells[1].textContent.trim() + " " + r.cells[3].textContent.trim())`); !slices.Equal(got, []string{"access_instructions sms", "access_instructions sms"}) {
		t.Fatalf("Messages lists %v for the visitor, want the instructions twice by SMS", got)
	}
}

// TestBrowserHelpSecuritySettings walks the help center's "security
// settings": a forgotten password reset from the sign-in page, More →
// Security, My Login 2FA off and on, the key-exchange settings (my pickups'
// 2FA, user pickups by PIN), a PIN set (an easy one refused), an
// authenticator app enrolled and removed, and a changed password, after
// which the next sign-in asks for the SMS code even with 2FA off. A staff
// user sets a PIN once the owner uses PINs, and sees no policy.
func TestBrowserHelpSecuritySettings(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	staffEmail := fmt.Sprintf("stan-%s@example.com", uuid.NewString()[:8])
	f.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Stan Staff", "email": staffEmail, "phone": "+14155550144", "role": "staff"})
	b := newBrowser(t, s.url)

	// Resetting your password: the email typed on the sign-in page goes
	// with "Forgot your password?".
	b.visit("/login")
	b.run(chromedp.SendKeys(chromedp.CSS("#email"), f.Email))
	b.submit("#forgot-link", `form[action="/forgot-password"]`)
	if got := jsEval[string](b, `document.getElementById("email").value`); got != f.Email {
		t.Fatalf("the reset form has %q, want the email typed on the sign-in page", got)
	}
	b.submit(`form[action="/forgot-password"] button`, `[role=status]`)
	b.visit("/reset-password?token=" + url.QueryEscape(s.resetToken(t, f.ID, f.Email)))
	password := "quay-side-31"
	b.run(chromedp.SendKeys(chromedp.CSS("#new_password"), password))
	b.submit(`form[action="/reset-password"] button`, `.flash`)
	b.signIn(s, f.ID, f.Email, password)

	// More → Security.
	b.run(chromedp.Click(chromedp.CSS("nav.menu summary")))
	b.submit(`nav.menu a[href="/security"]`, "#tfa-h")
	if ps := b.a11yProblems(); len(ps) > 0 {
		t.Errorf("/security: %v", ps)
	}

	// My Login 2FA: not changed without the right password; off, with the
	// warning; on again.
	b.run(chromedp.Click(chromedp.CSS("#login_2fa")), chromedp.SendKeys(chromedp.CSS("#tfa-current"), "not-my-password-1"))
	b.submit(`form[action="/security/login-2fa"] button`, "#form-error")
	if b.count("#login-2fa-warning") != 0 {
		t.Fatal("login 2FA went off with a wrong password")
	}
	b.visit("/security")
	b.run(chromedp.Click(chromedp.CSS("#login_2fa")), chromedp.SendKeys(chromedp.CSS("#tfa-current"), password))
	b.submit(`form[action="/security/login-2fa"] button`, "#login-2fa-warning")
	b.run(chromedp.Click(chromedp.CSS("#login_2fa")), chromedp.SendKeys(chromedp.CSS("#tfa-current"), password))
	b.submit(`form[action="/security/login-2fa"] button`, ".flash")
	b.sees(".flash", "Login 2FA is on")
	if b.count("#login-2fa-warning") != 0 || !jsEval[bool](b, `document.getElementById("login_2fa").checked`) {
		t.Fatal("login 2FA is not back on")
	}

	// Key exchange: PINs are not used yet, so there is no PIN to set.
	b.sees("#pin-unused", "does not use PINs")
	if b.count("#pin") != 0 {
		t.Fatal("the PIN form is offered while the business does not use PINs")
	}
	// My key pickups 2FA off: warned; then on, with user pickups by PIN.
	b.run(chromedp.Click(chromedp.CSS("#owner_pickups_2fa")))
	b.submit(`form[action="/security/key-exchange"] button`, ".flash")
	b.sees(`section[aria-labelledby="kx-h"] .warning`, "two-factor authentication is off")
	b.run(chromedp.Click(chromedp.CSS("#owner_pickups_2fa")), chromedp.SetValue(chromedp.CSS("#visitor_pickups"), "pin"))
	b.submit(`form[action="/security/key-exchange"] button`, ".flash")
	if b.count(`section[aria-labelledby="kx-h"] .warning`) != 0 || b.count("#pin-unused") != 0 {
		t.Fatal("after 2FA back on and PINs chosen, the page still warns or still says PINs are not used")
	}

	// Setting your PIN: an easy one is refused, a good one set.
	b.run(chromedp.SendKeys(chromedp.CSS("#pin"), "0000"))
	b.submit(`form[action="/security/pin"] button`, "#form-error")
	b.run(chromedp.SendKeys(chromedp.CSS("#pin"), "5831"))
	b.submit(`form[action="/security/pin"] button`, ".flash")
	b.sees(".flash", "Your PIN is set")
	b.sees(`section[aria-labelledby="pin-h"]`, "Your PIN is set")

	// An authenticator app, then back to SMS codes.
	b.run(chromedp.SendKeys(chromedp.CSS("#totp-current"), password))
	b.submit(`form[action="/security/totp"] button`, "#totp-secret")
	code, err := totp.GenerateCode(b.text("#totp-secret"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b.run(chromedp.SendKeys(chromedp.CSS("#totp-code"), code))
	b.submit(`form[action="/security/totp/confirm"] button`, "#recovery-codes")
	b.visit("/security")
	b.sees(`section[aria-labelledby="tfa-h"]`, "authenticator app")
	if ps := b.a11yProblems(); len(ps) > 0 {
		t.Errorf("/security with an authenticator app: %v", ps)
	}
	if b.count("#totp-remove-current") != 1 {
		t.Fatal("no way back from the authenticator app to SMS codes")
	}
	b.run(chromedp.SendKeys(chromedp.CSS("#totp-remove-current"), "not-my-password-1"))
	b.submit(`#totp-remove button`, "#form-error")
	b.run(chromedp.SendKeys(chromedp.CSS("#totp-remove-current"), password))
	b.submit(`#totp-remove button`, ".flash")
	b.sees(".flash", "authenticator app is removed")
	b.sees(`section[aria-labelledby="tfa-h"]`, "by SMS to +14155550100")
	if b.count("#totp-remove") != 0 {
		t.Fatal("the authenticator app can still be removed after its removal")
	}
	b.shot("01-security")

	// Changing your password, with login 2FA off: the next sign-in still
	// asks for the code sent by SMS; the one after does not.
	b.run(chromedp.Click(chromedp.CSS("#login_2fa")), chromedp.SendKeys(chromedp.CSS("#tfa-current"), password))
	b.submit(`form[action="/security/login-2fa"] button`, "#login-2fa-warning")
	const newPassword = "lighthouse-keeper-8"
	b.run(chromedp.SendKeys(chromedp.CSS("#pw-current"), password), chromedp.SendKeys(chromedp.CSS("#pw-new"), newPassword))
	b.submit(`form[action="/security/password"] button`, ".flash")
	b.sees(".flash", "Your password is changed")
	signOut := func() {
		t.Helper()
		b.submit(`form[action="/logout"] button`, `form[action="/login"]`)
	}
	signOut()
	b.run(chromedp.SetValue(chromedp.CSS("#email"), f.Email), chromedp.SendKeys(chromedp.CSS("#password"), newPassword))
	b.submit(`form[action="/login"] button`, "#code")
	b.sees("main", "by SMS")
	b.run(chromedp.SendKeys(chromedp.CSS("#code"), s.loginCode(t, f.ID)))
	b.submit(`form[action="/login/verify"] button`, "nav.menu")
	signOut()
	b.run(chromedp.SetValue(chromedp.CSS("#email"), f.Email), chromedp.SendKeys(chromedp.CSS("#password"), newPassword))
	b.submit(`form[action="/login"] button`, "nav.menu, #code")
	if b.count("#code") != 0 {
		t.Fatal("with login 2FA off, the sign-in after the first one still asks for a code")
	}

	// A staff user: no key-exchange policy, and a PIN of their own since
	// the business uses PINs.
	sb := newBrowser(t, s.url)
	sb.visit("/reset-password?token=" + url.QueryEscape(s.resetToken(t, f.ID, staffEmail)))
	sb.run(chromedp.SendKeys(chromedp.CSS("#new_password"), "front-desk-77"))
	sb.submit(`form[action="/reset-password"] button`, `.flash`)
	sb.signIn(s, f.ID, staffEmail, "front-desk-77")
	sb.visit("/security")
	if sb.count("#kx-h") != 0 {
		t.Fatal("a staff user sees the key-exchange policy")
	}
	sb.run(chromedp.SendKeys(chromedp.CSS("#pin"), "7392"))
	sb.submit(`form[action="/security/pin"] button`, ".flash")
	sb.sees(".flash", "Your PIN is set")
	if ps := sb.a11yProblems(); len(ps) > 0 {
		t.Errorf("/security for staff: %v", ps)
	}
}

// TestBrowserHelpManagingABooking walks the help center's "managing a
// booking": Bookings → the booking → About Booking: the copy buttons of
// the code and the URL and Copy Details; Edit: new dates and the return
// reminder on; and for ongoing access, made with the New booking form:
// Keys → See Visitors → the access: copy, resend (not yet: the time left
// shows), then Edit → Revoke Access, after which the key's visitors no
// longer list it.
func TestBrowserHelpManagingABooking(t *testing.T) {
	s := startServer(t)
	w := bkSetup(t, s, "Europe/Paris")
	keyID := w.key(t, "Van 33")
	phone := bkPhone()
	start, end := time.Now().Add(2*time.Hour).Truncate(time.Minute), time.Now().Add(26*time.Hour).Truncate(time.Minute)
	body := bkBody(keyID, phone, start, end)
	body["return_reminder"] = false
	m := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", body).JSON(t)
	id, code, link := m["id"].(string), m["code"].(string), m["url"].(string)

	b := newBrowser(t, s.url)
	b.signIn(s, w.ID, w.Email, w.Password)

	// Bookings → the booking → About Booking.
	b.submit(`nav.menu a[href="/bookings"]`, "#booking-list")
	b.submit(`#booking-list a[href="/bookings/`+id+`"]`, "#booking-code")
	b.sees("h1", "About Booking")

	// The copy icons: the code alone, the URL alone, then Copy Details.
	copied := func(sel string) string {
		t.Helper()
		b.run(chromedp.Click(chromedp.CSS(sel)), chromedp.WaitVisible(chromedp.CSS(sel+"[data-copied]")))
		return jsEval[string](b, `document.querySelector(`+strconv.Quote(sel)+`).dataset.copied`)
	}
	if got := copied(`button[data-copy="#booking-code"]`); got != code {
		t.Fatalf("the code's copy button copied %q, want %q", got, code)
	}
	if got := copied(`button[data-copy="#booking-url"]`); got != link {
		t.Fatalf("the URL's copy button copied %q, want %q", got, link)
	}
	details := copied(`button[data-copy="#booking-details"]`)
	paris, _ := time.LoadLocation("Europe/Paris")
	for _, want := range []string{"Van 33", code, link, start.In(paris).Format("15:04")} {
		if !strings.Contains(details, want) {
			t.Fatalf("Copy Details copied %q, without %q", details, want)
		}
	}
	b.sees("#copy-status", "Booking details copied")

	// Edit: later dates and the return reminder on.
	b.submit(`a[href="/bookings/`+id+`/edit"]`, "#ends_at")
	newStart, newEnd := start.Add(time.Hour).In(paris), end.Add(24*time.Hour).In(paris)
	b.run(chromedp.SetValue(chromedp.CSS("#starts_at"), newStart.Format("2006-01-02T15:04")),
		chromedp.SetValue(chromedp.CSS("#ends_at"), newEnd.Format("2006-01-02T15:04")), chromedp.Click(chromedp.CSS("#return_reminder")))
	if ps := b.a11yProblems(); len(ps) > 0 {
		t.Errorf("Edit booking: %v", ps)
	}
	b.submit(`form[action$="/edit"] button[type=submit]`, ".flash")
	b.sees(".flash", "Booking updated")
	b.sees("dl.facts", newEnd.Format("Mon 2 Jan 2006, 15:04"))
	b.sees("dl.facts", "Return reminder\nOn")
	got := w.Owner.expect(t, 200, "GET", "/api/v1/bookings/"+id, nil).JSON(t)
	if got["starts_at"] != rfc(newStart) || got["ends_at"] != rfc(newEnd) || got["return_reminder"] != true {
		t.Fatalf("after the edit the booking is %v", got)
	}
	if n := len(w.messagesTo(t, "return_reminder", phone)); n != 1 {
		t.Fatalf("%d return reminders scheduled after turning it on, want 1", n)
	}

	// Ongoing access from the New booking form, by email.
	email := fmt.Sprintf("olga-%s@example.com", uuid.NewString()[:8])
	b.submit(`nav.menu a[href="/bookings"]`, "#booking-list")
	b.submit(`a[href="/bookings/new"]`, "#visitor_name")
	b.run(chromedp.Click(chromedp.CSS(`input[name=kind][value=ongoing]`)), chromedp.SendKeys(chromedp.CSS("#visitor_name"), "Olga Ongoing"),
		chromedp.SendKeys(chromedp.CSS("#visitor_email"), email), chromedp.SetValue(chromedp.CSS("#notify_via"), "email"),
		chromedp.SetValue(chromedp.CSS("#starts_at"), time.Now().In(paris).Add(-5*time.Minute).Format("2006-01-02T15:04")))
	b.submit(`form[action="/bookings"] button[type=submit]`, "#booking-code")
	b.sees("dl.facts", "no end (ongoing)")
	ongoingCode := b.text("#booking-code")
	if n := len(w.messagesTo(t, "access_instructions", email)); n != 1 {
		t.Fatalf("%d instructions by email for the ongoing access, want 1", n)
	}

	// Keys → See Visitors → the ongoing access.
	b.submit(`nav.menu a[href="/keys"]`, "main tbody")
	b.submit(`a[href="/keys/`+keyID.String()+`/visitors"]`, "main tbody")
	row := `//tr[td[contains(., "Olga Ongoing")]]`
	b.sees("main tbody", "Ongoing")
	b.follow(chromedp.Click(chromedp.Search(row+`//a[contains(., "Details")]`)), "#booking-code")
	if got := copied(`button[data-copy="#booking-code"]`); got != ongoingCode {
		t.Fatalf("copied %q, want the ongoing access's code %q", got, ongoingCode)
	}
	if details := copied(`button[data-copy="#booking-details"]`); !strings.Contains(details, "Van 33") || !strings.Contains(details, ongoingCode) {
		t.Fatalf("Copy Details of the ongoing access copied %q", details)
	}
	if !jsEval[bool](b, `document.getElementById("resend").disabled`) {
		t.Fatal("Resend Access Instructions of the new ongoing access is enabled")
	}
	b.sees("#resend-why", "You can resend in")

	// Edit → Revoke Access: no longer among the key's visitors.
	b.visit("/keys/" + keyID.String() + "/visitors")
	b.follow(chromedp.Click(chromedp.Search(row+`//a[contains(., "Edit or revoke")]`)), "#revoke")
	b.run(chromedp.Click(chromedp.CSS(`input[name=confirm]`)))
	b.submit("#revoke", ".flash")
	b.sees("#booking-status", "Revoked")
	b.visit("/keys/" + keyID.String() + "/visitors")
	if strings.Contains(b.text("main"), "Olga Ongoing") {
		t.Fatal("the revoked ongoing access is still among the key's visitors")
	}
	b.sees("main tbody", "Val Visitor")
	b.shot("01-key-visitors")
}
