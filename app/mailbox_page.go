package main

import (
	"bytes"
	"html/template"
)

var mailboxPage = template.Must(template.New("mailbox").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>keyrelay · development mailbox</title>
<style>body{font:15px system-ui,sans-serif;margin:2rem;max-width:60rem}article{border:1px solid #ccc;border-radius:6px;padding:.75rem 1rem;margin:.75rem 0}
header{color:#555;font-size:13px}pre{white-space:pre-wrap;font:inherit}</style></head>
<body><h1>Development mailbox</h1><p>Every SMS and email keyrelay sent in development, newest first. This page does not exist in production.</p>
{{range .}}<article><header>{{.CreatedAt}} · {{.Channel}} to <strong>{{.To}}</strong> · tenant {{.TenantID}}</header>
{{if .Subject}}<h3>{{.Subject}}</h3>{{end}}<pre>{{.Body}}</pre></article>{{else}}<p>No messages yet.</p>{{end}}
</body></html>`))

func renderMailbox(entries []devMailboxEntry) string {
	var b bytes.Buffer
	if err := mailboxPage.Execute(&b, entries); err != nil {
		return "mailbox: " + template.HTMLEscapeString(err.Error())
	}
	return b.String()
}
