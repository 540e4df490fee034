package delivery

import (
	"bytes"
	"embed"
	"fmt"
	htmltemplate "html/template"
	"io/fs"
	"path"
	"strings"
	texttemplate "text/template"
)

//go:embed templates
var templateFS embed.FS

// Languages messages are written in; the first is the fallback.
var Languages = []string{"en", "fr"}

// Rendered is a message ready for a provider.
type Rendered struct {
	Subject, Text, HTML string
}

// Templates renders each kind of message in each language. A template file
// defines "subject", "text" and "html"; the HTML part is parsed with
// html/template so that data (names, addresses) is escaped.
type Templates struct {
	text map[string]*texttemplate.Template
	html map[string]*htmltemplate.Template
}

// LoadTemplates parses the embedded templates.
func LoadTemplates() (*Templates, error) {
	t := &Templates{text: map[string]*texttemplate.Template{}, html: map[string]*htmltemplate.Template{}}
	err := fs.WalkDir(templateFS, "templates", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := templateFS.ReadFile(p)
		if err != nil {
			return err
		}
		lang := path.Base(path.Dir(p))
		key := lang + "/" + strings.TrimSuffix(path.Base(p), ".tmpl")
		tt, err := texttemplate.New(key).Option("missingkey=zero").Parse(string(raw))
		if err != nil {
			return fmt.Errorf("delivery: template %s: %w", p, err)
		}
		ht, err := htmltemplate.New(key).Option("missingkey=zero").Parse(string(raw))
		if err != nil {
			return fmt.Errorf("delivery: template %s: %w", p, err)
		}
		t.text[key], t.html[key] = tt, ht
		return nil
	})
	return t, err
}

// Kinds lists the message kinds with a template, per language.
func (t *Templates) Kinds(lang string) []string {
	var kinds []string
	for k := range t.text {
		if l, kind, _ := strings.Cut(k, "/"); l == lang {
			kinds = append(kinds, kind)
		}
	}
	return kinds
}

// Render writes kind in lang (English when lang has no such template).
func (t *Templates) Render(kind, lang string, data map[string]string) (Rendered, error) {
	return t.render(kind, lang, data, true)
}

// RenderText is Render without the HTML part, for SMS.
func (t *Templates) RenderText(kind, lang string, data map[string]string) (Rendered, error) {
	return t.render(kind, lang, data, false)
}

func (t *Templates) render(kind, lang string, data map[string]string, withHTML bool) (Rendered, error) {
	key := lang + "/" + kind
	if _, ok := t.text[key]; !ok {
		key = Languages[0] + "/" + kind
	}
	tt, ok := t.text[key]
	if !ok {
		return Rendered{}, fmt.Errorf("delivery: no template for message kind %q", kind)
	}
	var r Rendered
	var b bytes.Buffer
	for name, dst := range map[string]*string{"subject": &r.Subject, "text": &r.Text} {
		b.Reset()
		if err := tt.ExecuteTemplate(&b, name, data); err != nil {
			return Rendered{}, fmt.Errorf("delivery: render %s/%s: %w", key, name, err)
		}
		*dst = strings.TrimSpace(b.String())
	}
	if !withHTML {
		return r, nil
	}
	b.Reset()
	if err := t.html[key].ExecuteTemplate(&b, "html", data); err != nil {
		return Rendered{}, fmt.Errorf("delivery: render %s/html: %w", key, err)
	}
	r.HTML = strings.TrimSpace(b.String())
	return r, nil
}
