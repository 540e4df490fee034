package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/keyrelay/keyrelay/plugins/providers/devmailbox/devmailbox"
	"github.com/keyrelay/keyrelay/plugins/sdk"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/accounts"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/outbox"
	"github.com/keyrelay/keyrelay/tenants/providers"
)

// mergedOpenAPI is the document the server serves.
func mergedOpenAPI(t testing.TB) []byte {
	t.Helper()
	raw, err := buildOpenAPI()
	if err != nil {
		t.Fatalf("openapi: %v", err)
	}
	return raw
}

// loadOpenAPI parses and validates the embedded document.
func loadOpenAPI(t testing.TB, raw []byte) *openapi3.T {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(raw)
	if err != nil {
		t.Fatalf("openapi.json does not load: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.json is not a valid OpenAPI document: %v", err)
	}
	return doc
}

// docOp is one documented operation, keyed by its full path on the server.
type docOp struct {
	method, path string // path as served, e.g. /api/v1/users/{id}
	template     string // path key in the document, e.g. /users/{id}
	item         *openapi3.PathItem
	op           *openapi3.Operation
	server       *openapi3.Server
}

func (o docOp) key() string { return o.method + " " + o.path }

// documentedOps lists every operation with the path it is served at: the
// path-level server if the path has one, else the document's first server.
func documentedOps(doc *openapi3.T) map[string]docOp {
	ops := map[string]docOp{}
	for tpl, item := range doc.Paths.Map() {
		servers := doc.Servers
		if len(item.Servers) > 0 {
			servers = item.Servers
		}
		var srv *openapi3.Server
		base := ""
		if len(servers) > 0 {
			srv = servers[0]
			base = strings.TrimRight(srv.URL, "/")
		}
		for method, op := range item.Operations() {
			o := docOp{method: strings.ToUpper(method), path: base + tpl, template: tpl, item: item, op: op, server: srv}
			ops[o.key()] = o
		}
	}
	return ops
}

var fiberParam = regexp.MustCompile(`:([A-Za-z0-9_]+)(<[^>]*>)?\??`)

// openAPIPath turns Fiber's /users/:id into OpenAPI's /users/{id}.
func openAPIPath(fiberPath string) string {
	return fiberParam.ReplaceAllString(fiberPath, "{$1}")
}

// registeredRoutes lists the routes a request can reach, as "METHOD /path",
// leaving out Fiber's automatic HEAD twins of GET routes and middleware
// (app.Use, including the catch-all 404 handler).
func registeredRoutes(rs []fiber.Route) map[string]fiber.Route {
	out := map[string]fiber.Route{}
	for _, r := range rs {
		if r.Method == fiber.MethodHead || r.Method == "USE" || r.Path == "/" || r.Path == "" || r.Path == "*" || r.Path == "/*" {
			continue
		}
		out[r.Method+" "+openAPIPath(r.Path)] = r
	}
	return out
}

// routeDrift returns the /api/v1 routes missing from the document and the
// documented operations that no route serves.
func routeDrift(routes map[string]fiber.Route, ops map[string]docOp) (undocumented, stale []string) {
	for k := range routes {
		path := strings.SplitN(k, " ", 2)[1]
		if (path == "/api/v1" || strings.HasPrefix(path, "/api/v1/")) && !hasKey(ops, k) {
			undocumented = append(undocumented, k)
		}
	}
	for k := range ops {
		if _, ok := routes[k]; !ok {
			stale = append(stale, k)
		}
	}
	sort.Strings(undocumented)
	sort.Strings(stale)
	return undocumented, stale
}

func hasKey[V any](m map[string]V, k string) bool { _, ok := m[k]; return ok }

func TestOpenAPIDocumentIsValid(t *testing.T) {
	doc := loadOpenAPI(t, mergedOpenAPI(t))
	if doc.OpenAPI != "3.0.3" {
		t.Errorf("openapi = %q, want 3.0.3", doc.OpenAPI)
	}
	if len(doc.Servers) != 1 || doc.Servers[0].URL != "/api/v1" {
		t.Errorf("servers = %v, want exactly /api/v1", doc.Servers)
	}
	seen := map[string]string{}
	for k, o := range documentedOps(doc) {
		op := o.op
		if op.OperationID == "" || op.Summary == "" || len(op.Tags) == 0 {
			t.Errorf("%s: needs an operationId, a summary and tags", k)
		}
		if prev, dup := seen[op.OperationID]; dup {
			t.Errorf("%s: operationId %q already used by %s", k, op.OperationID, prev)
		}
		seen[op.OperationID] = k
		if op.Security == nil {
			t.Errorf("%s: security must be stated on the operation (security: [] for public calls)", k)
		} else if len(*op.Security) > 0 && op.Responses.Value("401") == nil {
			t.Errorf("%s: authenticated, but no 401 response", k)
		}
		if !hasSuccess(op) {
			t.Errorf("%s: no 2xx response", k)
		}
		for code, r := range op.Responses.Map() {
			// Errors are problem documents; only readiness reports its 503 as JSON.
			isError := strings.HasPrefix(code, "4") || strings.HasPrefix(code, "5")
			if isError && op.OperationID != "readyz" && r.Value.Content.Get("application/problem+json") == nil {
				t.Errorf("%s: response %s is not application/problem+json", k, code)
			}
		}
		if op.RequestBody != nil {
			mt := op.RequestBody.Value.Content.Get(fiber.MIMEApplicationJSON)
			if mt == nil || len(op.RequestBody.Value.Content) != 1 {
				t.Errorf("%s: the request body must be application/json only", k)
				continue
			}
			if s := mt.Schema.Value; s.AdditionalProperties.Has == nil || *s.AdditionalProperties.Has {
				t.Errorf("%s: request body schema must say additionalProperties: false (unknown fields are refused)", k)
			}
			for _, code := range []string{"400", "413"} {
				if op.Responses.Value(code) == nil {
					t.Errorf("%s: binds a JSON body, but no %s response", k, code)
				}
			}
		}
	}
	// The problem document carries what errors.go writes.
	p := doc.Components.Schemas["Problem"]
	if p == nil {
		t.Fatal("no Problem schema")
	}
	for _, f := range []string{"type", "title", "status", "detail", "errors", "request_id"} {
		if p.Value.Properties[f] == nil {
			t.Errorf("Problem has no %q property", f)
		}
	}
	var pr problem
	checkFields(t, "Problem", p.Value, reflect.TypeOf(pr))

	// The other schemas written straight from a Go type carry its fields.
	fallback, _ := reflect.TypeOf(providers.View{}).FieldByName("Fallback")
	for name, typ := range map[string]reflect.Type{
		"Message":                    reflect.TypeOf(outbox.MessageView{}),
		"NotificationSettings":       reflect.TypeOf(outbox.Settings{}),
		"NotificationSettingsUpdate": reflect.TypeOf(outbox.Settings{}),
		"QuietHours":                 reflect.TypeOf(outbox.QuietHours{}),
		"ProviderRoute":              reflect.TypeOf(providers.View{}),
		"ProviderRouteInput":         reflect.TypeOf(providers.RouteInput{}),
		"ProviderChoiceInput":        reflect.TypeOf(providers.ChoiceInput{}),
		"DevMailboxMessage":          reflect.TypeOf(devMailboxEntry{}),
		"VerifyLoginRequest":         reflect.TypeOf(accounts.VerifyInput{}),
		"MySecurity":                 reflect.TypeOf(accounts.MySecurity{}),
		"UpdateMySecurityRequest":    reflect.TypeOf(accounts.SecurityInput{}),
		"TOTPEnrolment":              reflect.TypeOf(accounts.TOTPEnrolment{}),
		"SecurityPolicy":             reflect.TypeOf(accounts.PolicyView{}),
		"SecurityPolicyUpdate":       reflect.TypeOf(accounts.PolicyInput{}),
		"AuditEvent":                 reflect.TypeOf(audit.Event{}),
	} {
		s := doc.Components.Schemas[name]
		if s == nil {
			t.Errorf("no %s schema", name)
			continue
		}
		checkFields(t, name, s.Value, typ)
		if name == "ProviderRoute" {
			checkFields(t, name+".fallback", s.Value.Properties["fallback"].Value, fallback.Type.Elem())
		}
	}
	if s := doc.Components.Schemas["ProvidersUpdate"]; s == nil || !slices.Equal(slices.Sorted(maps.Keys(s.Value.Properties)), slices.Sorted(slices.Values(providers.Channels))) {
		t.Errorf("ProvidersUpdate must have one property per channel %v", providers.Channels)
	}
}

func hasSuccess(op *openapi3.Operation) bool {
	for code := range op.Responses.Map() {
		if strings.HasPrefix(code, "2") {
			return true
		}
	}
	return false
}

// checkFields asserts schema has exactly the JSON fields of the Go type.
func checkFields(t *testing.T, name string, schema *openapi3.Schema, typ reflect.Type) {
	t.Helper()
	want := jsonFields(typ)
	var got []string
	for p := range schema.Properties {
		got = append(got, p)
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("schema %s has properties %v, the Go type %v has %v", name, got, typ, want)
	}
}

// jsonFields lists the JSON names of typ's fields, with the fields of
// embedded structs promoted as encoding/json does.
func jsonFields(typ reflect.Type) []string {
	var out []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := strings.Split(f.Tag.Get("json"), ",")[0]
		if f.Anonymous && tag == "" && f.Type.Kind() == reflect.Struct {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		if tag == "-" || !f.IsExported() {
			continue
		}
		if tag == "" {
			tag = f.Name
		}
		out = append(out, tag)
	}
	return out
}

// guardedRoutes consult the brute-force counters of tenants/guard (directly,
// or through the password re-check): they answer 429 with Retry-After, and
// 503 when Redis is down (they fail closed), sign-in rate limit or not.
var guardedRoutes = []string{
	"POST /api/v1/auth/login",
	"POST /api/v1/auth/login/verify",
	"POST /api/v1/auth/login/resend",
	"PUT /api/v1/me/security",
	"POST /api/v1/me/totp",
	"POST /api/v1/me/totp/confirm",
	"DELETE /api/v1/me/totp",
}

func TestOpenAPICoversEveryRoute(t *testing.T) {
	doc := loadOpenAPI(t, mergedOpenAPI(t))
	s := startServer(t)
	routes := registeredRoutes(s.app.http.GetRoutes(true))
	ops := documentedOps(doc)

	if !hasKey(routes, "GET /api/v1/users/{id}") {
		t.Fatalf("route listing looks wrong (no GET /api/v1/users/{id}): %v", keys(routes))
	}
	undocumented, stale := routeDrift(routes, ops)
	for _, k := range undocumented {
		t.Errorf("route %s is not in app/openapi/*.json: document it", k)
	}
	for _, k := range stale {
		t.Errorf("app/openapi/*.json documents %s, but no route serves it: remove it or add the route", k)
	}

	t.Run("DriftIsDetected", func(t *testing.T) {
		extra := maps.Clone(routes)
		extra["POST /api/v1/undocumented/{id}"] = fiber.Route{Method: "POST", Path: "/api/v1/undocumented/:id"}
		delete(extra, "GET /api/v1/me")
		u, st := routeDrift(extra, ops)
		if !slices.Contains(u, "POST /api/v1/undocumented/{id}") {
			t.Errorf("an undocumented route was not reported: %v", u)
		}
		if !slices.Contains(st, "GET /api/v1/me") {
			t.Errorf("a documented operation without a route was not reported: %v", st)
		}
	})

	// The middleware on each route is what the document promises.
	ptr := func(h fiber.Handler) uintptr { return reflect.ValueOf(h).Pointer() }
	signin, err := s.app.perIP("openapi-test", "1000-M")
	if err != nil {
		t.Fatal(err)
	}
	var (
		idem     = ptr(s.app.idempotent)
		auth     = ptr(s.app.authenticate)
		limit    = ptr(signin)
		admin    = ptr(role(tenants.RoleAdmin))
		operator = ptr(s.app.operator)
	)
	for _, k := range guardedRoutes {
		if !hasKey(routes, k) {
			t.Errorf("guardedRoutes names %s, but no route serves it", k)
		}
	}
	for k, r := range routes {
		o, ok := ops[k]
		if !ok {
			continue
		}
		uses := func(p uintptr) bool {
			return slices.ContainsFunc(r.Handlers, func(h fiber.Handler) bool { return ptr(h) == p })
		}
		op := o.op
		hasIdemParam := op.Parameters.GetByInAndName(openapi3.ParameterInHeader, headerIdempotencyKey) != nil
		if uses(idem) != hasIdemParam {
			t.Errorf("%s: idempotency middleware %v, Idempotency-Key documented %v", k, uses(idem), hasIdemParam)
		}
		if uses(idem) && (op.Responses.Value("409") == nil || op.Responses.Value("503") == nil || op.Responses.Value("422") == nil) {
			t.Errorf("%s: idempotent, so it answers 409, 422 and 503: document them", k)
		}
		authed, operatorOnly := false, false
		if op.Security != nil {
			for _, req := range *op.Security {
				if _, ok := req["operatorToken"]; ok {
					operatorOnly = true
				} else if len(req) > 0 {
					authed = true
				}
			}
		}
		if uses(auth) != authed {
			t.Errorf("%s: authenticate middleware %v, security documented %v", k, uses(auth), authed)
		}
		if uses(operator) != operatorOnly {
			t.Errorf("%s: operator credential middleware %v, operatorToken documented %v", k, uses(operator), operatorOnly)
		}
		r429 := op.Responses.Value("429")
		documented429 := r429 != nil && r429.Value.Headers["Retry-After"] != nil
		guarded := slices.Contains(guardedRoutes, k)
		if limited := uses(limit) || guarded; limited != documented429 {
			t.Errorf("%s: sign-in rate limit %v, attempt counters %v, 429 with Retry-After documented %v", k, uses(limit), guarded, documented429)
		}
		if (uses(limit) || guarded) && op.Responses.Value("503") == nil {
			t.Errorf("%s: limited through Redis, so it answers 503: document it", k)
		}
		if uses(admin) && op.Responses.Value("403") == nil {
			t.Errorf("%s: admin only, but no 403 documented", k)
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestOpenAPIServed(t *testing.T) {
	s := startServer(t)
	res, err := http.Get(s.url + "/api/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	if !bytes.Equal(body, mergedOpenAPI(t)) {
		t.Errorf("the served document is not the embedded one")
	}
	doc := loadOpenAPI(t, body)
	if doc.Paths.Len() == 0 {
		t.Error("the served document has no paths")
	}
}

// specCheck sends real requests and checks each request it expects to be
// valid, and every response, against the document. It keeps its own small
// HTTP client so that it depends on the test harness only for startServer
// and, to finish a sign-in, for the code the server sent (lastCode).
type specCheck struct {
	t   *testing.T
	srv *server
	url string
	doc *openapi3.T
	ops map[string]docOp
}

// caller is one API client: a bearer token (may be empty).
type caller struct {
	token string
}

type answer struct {
	Status int
	Header http.Header
	Body   []byte
}

func (a answer) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(a.Body, &m); err != nil {
		t.Fatalf("response is not a JSON object: %v: %s", err, a.Body)
	}
	return m
}

// fieldErrors lists the fields a 422 problem document names.
func fieldErrors(t testing.TB, a answer) []string {
	t.Helper()
	var p problem
	if err := json.Unmarshal(a.Body, &p); err != nil {
		t.Fatalf("not a problem document: %v: %s", err, a.Body)
	}
	var fields []string
	for _, e := range p.Errors {
		fields = append(fields, e.Field)
	}
	return fields
}

func (sc *specCheck) find(method, path string) (docOp, map[string]string) {
	segs := strings.Split(path, "/")
	var best docOp
	var bestParams map[string]string
	bestVars := -1
	for _, o := range sc.ops {
		if o.method != method {
			continue
		}
		tsegs := strings.Split(o.path, "/")
		if len(tsegs) != len(segs) {
			continue
		}
		params := map[string]string{}
		match := true
		for i, ts := range tsegs {
			if strings.HasPrefix(ts, "{") && strings.HasSuffix(ts, "}") {
				params[ts[1:len(ts)-1]] = segs[i]
			} else if ts != segs[i] {
				match = false
				break
			}
		}
		if match && (bestVars < 0 || len(params) < bestVars) {
			best, bestParams, bestVars = o, params, len(params)
		}
	}
	if bestVars < 0 {
		sc.t.Fatalf("%s %s: no documented operation matches", method, path)
	}
	return best, bestParams
}

// newRequest builds the request; body is marshalled unless it is a string.
func (sc *specCheck) newRequest(c caller, method, rawPath string, body any, headers ...string) (*http.Request, []byte) {
	t := sc.t
	t.Helper()
	var raw []byte
	var err error
	switch b := body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	default:
		if raw, err = json.Marshal(b); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequest(method, sc.url+rawPath, bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return req, raw
}

func (sc *specCheck) send(c caller, method, rawPath string, body any, headers ...string) answer {
	sc.t.Helper()
	req, _ := sc.newRequest(c, method, rawPath, body, headers...)
	res, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		sc.t.Fatalf("%s %s: %v", method, rawPath, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return answer{Status: res.StatusCode, Header: res.Header, Body: b}
}

// call sends the request as c and checks the status is want. When
// validRequest is set the request must satisfy the document too; the
// response always must.
func (sc *specCheck) call(c caller, want int, validRequest bool, method, rawPath string, body any, headers ...string) answer {
	t := sc.t
	t.Helper()
	r := sc.send(c, method, rawPath, body, headers...)
	if r.Status != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, rawPath, r.Status, want, r.Body)
	}
	sc.check(r, c, validRequest, method, rawPath, body, headers...)
	return r
}

// check validates the answer r to the request (and the request itself when
// validRequest is set) against the document.
func (sc *specCheck) check(r answer, c caller, validRequest bool, method, rawPath string, body any, headers ...string) {
	t := sc.t
	t.Helper()
	u, err := url.Parse(rawPath)
	if err != nil {
		t.Fatal(err)
	}
	o, params := sc.find(method, u.Path)
	req, _ := sc.newRequest(c, method, rawPath, body, headers...)
	route := &routers.Route{Spec: sc.doc, Server: o.server, Path: o.template, PathItem: o.item, Method: method, Operation: o.op}
	opts := &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true, MultiError: true}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	ctx := context.Background()
	if validRequest {
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			t.Errorf("%s %s: the server accepted a request the document refuses: %v", method, rawPath, err)
		}
	}
	rin := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: r.Status, Header: r.Header, Options: opts}
	rin.SetBodyBytes(r.Body)
	if err := openapi3filter.ValidateResponse(ctx, rin); err != nil {
		t.Errorf("%s %s -> %d: the response does not match the document: %v\n%s", method, rawPath, r.Status, err, r.Body)
	}
}

// signIn signs in as a client of the document would: the password, then,
// when the answer is 202, the code the server sent (read from the outbox).
// It reports whether a second factor was asked for.
func (sc *specCheck) signIn(email, password string) (caller, bool) {
	t := sc.t
	t.Helper()
	var anon caller
	body := map[string]any{"email": email, "password": password}
	r := sc.send(anon, "POST", "/api/v1/auth/login", body)
	sc.check(r, anon, true, "POST", "/api/v1/auth/login", body)
	challenged := r.Status == http.StatusAccepted
	switch r.Status {
	case http.StatusOK:
	case http.StatusAccepted:
		challenge := r.JSON(t)["challenge_id"].(string)
		r = sc.call(anon, 200, true, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": challenge, "code": sc.srv.lastCode(t, challenge)})
	default:
		t.Fatalf("sign in: status %d: %s", r.Status, r.Body)
	}
	tok, _ := r.JSON(t)["token"].(string)
	if tok == "" {
		t.Fatalf("sign in: no token: %s", r.Body)
	}
	return caller{token: tok}, challenged
}

// otherCode is a 6-digit code that is not code.
func otherCode(code string) string {
	var n int
	fmt.Sscanf(code, "%d", &n)
	return fmt.Sprintf("%06d", (n+1)%1_000_000)
}

var totpOpts = totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

// totpCode is the authenticator app's current code for secret.
func totpCode(t testing.TB, secret string) string {
	t.Helper()
	return totpCodeAt(t, secret, time.Now())
}

// totpCodeAt is the code the authenticator app shows at the time at.
func totpCodeAt(t testing.TB, secret string, at time.Time) string {
	t.Helper()
	code, err := totp.GenerateCodeCustom(secret, at, totpOpts)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// wrongTOTP is a 6-digit code the app shows at none of the steps around now.
func wrongTOTP(t testing.TB, secret string) string {
	t.Helper()
	near := map[string]bool{}
	for step := -3; step <= 3; step++ {
		code, err := totp.GenerateCodeCustom(secret, time.Now().Add(time.Duration(step)*30*time.Second), totpOpts)
		if err != nil {
			t.Fatal(err)
		}
		near[code] = true
	}
	for i := 0; ; i++ {
		if c := fmt.Sprintf("%06d", i); !near[c] {
			return c
		}
	}
}

// TestOpenAPIDescribesResponses drives every documented operation through
// the real server and checks requests and answers against the document.
func TestOpenAPIDescribesResponses(t *testing.T) {
	doc := loadOpenAPI(t, mergedOpenAPI(t))
	s := startServer(t, func(c *Config) { c.BodyLimit = 16 << 10 })
	sc := &specCheck{t: t, srv: s, url: s.url, doc: doc, ops: documentedOps(doc)}
	started := time.Now().Add(-time.Minute)

	var anon caller
	sc.call(anon, 200, true, "GET", "/healthz", nil)
	sc.call(anon, 200, true, "GET", "/readyz", nil)
	sc.call(anon, 200, true, "GET", "/api/v1/openapi.json", nil)

	// Signing up, with a replayed retry.
	email := fmt.Sprintf("spec-%s@example.com", uuid.NewString()[:8])
	password := "correct-horse-42"
	signup := map[string]any{"company": "Spec Rentals", "name": "Olive Owner", "email": email, "phone": "+14155550100", "password": password}
	key := uuid.NewString()
	first := sc.call(anon, 201, true, "POST", "/api/v1/signup", signup, "Idempotency-Key", key)
	again := sc.call(anon, 201, true, "POST", "/api/v1/signup", signup, "Idempotency-Key", key)
	if !bytes.Equal(first.Body, again.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("signup retry was not replayed: %s / %s", first.Body, again.Body)
	}
	other := maps.Clone(signup)
	other["company"] = "Other"
	sc.call(anon, 422, true, "POST", "/api/v1/signup", other, "Idempotency-Key", key)
	sc.call(anon, 400, false, "POST", "/api/v1/signup", map[string]any{"company": "x", "tenant": "y"})
	sc.call(anon, 400, false, "POST", "/api/v1/signup", "{not json")
	weak := maps.Clone(signup)
	weak["password"] = "password1"
	sc.call(anon, 422, true, "POST", "/api/v1/signup", weak)
	sc.call(anon, 413, false, "POST", "/api/v1/signup", `{"company":"`+strings.Repeat("x", 20<<10)+`"}`)

	// Signing in: the password, then (login 2FA is on by default) the code
	// sent by SMS.
	sc.call(anon, 401, true, "POST", "/api/v1/auth/login", map[string]any{"email": email, "password": "wrong-password-1"})
	credentials := map[string]any{"email": email, "password": password}
	pending := sc.call(anon, 202, true, "POST", "/api/v1/auth/login", credentials).JSON(t)
	if pending["channel"] != "sms" {
		t.Errorf("the owner has a phone, but the challenge says %v", pending)
	}
	challenge := pending["challenge_id"].(string)
	sent := s.lastCode(t, challenge)
	const verifyPath, resendPath = "/api/v1/auth/login/verify", "/api/v1/auth/login/resend"
	sc.call(anon, 401, true, "POST", verifyPath, map[string]any{"challenge_id": challenge, "code": otherCode(sent)})
	if f := fieldErrors(t, sc.call(anon, 422, false, "POST", verifyPath, map[string]any{"challenge_id": challenge})); !slices.Equal(f, []string{"code"}) {
		t.Errorf("verify without a code: errors on %v, want [code]", f)
	}
	sc.call(anon, 422, false, "POST", verifyPath, map[string]any{"challenge_id": challenge, "code": sent, "recovery_code": "aaaa-bbbb-cccc-dddd"})
	sc.call(anon, 401, true, "POST", verifyPath, map[string]any{"challenge_id": "krc_nope", "code": sent})
	sc.call(anon, 400, false, "POST", verifyPath, map[string]any{"challenge_id": challenge, "code": sent, "pin": "1234"})
	sc.call(anon, 202, true, "POST", resendPath, map[string]any{"challenge_id": challenge})
	resent := s.lastCode(t, challenge)
	if resent != sent {
		sc.call(anon, 401, true, "POST", verifyPath, map[string]any{"challenge_id": challenge, "code": sent})
	}
	sc.call(anon, 401, true, "POST", resendPath, map[string]any{"challenge_id": "krc_nope"})
	sc.call(anon, 400, false, "POST", resendPath, "{not json")
	verified := sc.call(anon, 200, true, "POST", verifyPath, map[string]any{"challenge_id": challenge, "code": resent})
	if !strings.Contains(verified.Header.Get("Set-Cookie"), "keyrelay_session=") {
		t.Errorf("verify set no session cookie: %v", verified.Header)
	}
	owner := caller{token: verified.JSON(t)["token"].(string)}
	sc.call(anon, 401, true, "POST", verifyPath, map[string]any{"challenge_id": challenge, "code": resent})
	sc.call(anon, 401, true, "POST", resendPath, map[string]any{"challenge_id": challenge})
	me := sc.call(owner, 200, true, "GET", "/api/v1/me", nil).JSON(t)
	ownerID := me["id"].(string)
	sc.call(anon, 401, true, "GET", "/api/v1/me", nil)

	// Users.
	staffEmail := fmt.Sprintf("staff-%s@example.com", uuid.NewString()[:8])
	staff := sc.call(owner, 201, true, "POST", "/api/v1/users", map[string]any{"name": "Sam Staff", "email": staffEmail, "phone": nil, "role": "staff"}, "Idempotency-Key", uuid.NewString()).JSON(t)
	staffID := staff["id"].(string)
	sc.call(owner, 409, true, "POST", "/api/v1/users", map[string]any{"name": "Sam Again", "email": staffEmail, "role": "staff"})
	sc.call(owner, 422, false, "POST", "/api/v1/users", map[string]any{"name": "Bad Phone", "email": "bad-" + staffEmail, "phone": "555", "role": "staff"})
	page := sc.call(owner, 200, true, "GET", "/api/v1/users?limit=1", nil).JSON(t)
	cursor, _ := page["next_cursor"].(string)
	if cursor == "" {
		t.Fatalf("a full page has no next_cursor: %v", page)
	}
	sc.call(owner, 200, true, "GET", "/api/v1/users?limit=1&cursor="+cursor, nil)
	sc.call(owner, 422, false, "GET", "/api/v1/users?limit=0", nil)
	sc.call(owner, 200, true, "GET", "/api/v1/users/"+staffID, nil)
	sc.call(owner, 404, true, "GET", "/api/v1/users/"+uuid.NewString(), nil)
	sc.call(owner, 200, true, "PATCH", "/api/v1/users/"+staffID, map[string]any{"name": nil, "phone": "+14155550101", "role": "admin", "disabled": false})
	sc.call(owner, 403, true, "PATCH", "/api/v1/users/"+ownerID, map[string]any{"role": "admin"})
	sc.call(owner, 400, false, "PATCH", "/api/v1/users/"+staffID, map[string]any{"email": "x@example.com"})

	// API keys.
	created := sc.call(owner, 201, true, "POST", "/api/v1/api-keys", map[string]any{"name": "Rental system", "role": "staff"}, "Idempotency-Key", uuid.NewString()).JSON(t)
	sc.call(owner, 422, false, "POST", "/api/v1/api-keys", map[string]any{"name": "", "role": "staff"})
	sc.call(owner, 200, true, "GET", "/api/v1/api-keys", nil)
	var integ caller
	integ.token = created["key"].(string)
	sc.call(integ, 403, true, "GET", "/api/v1/me", nil)
	sc.call(integ, 403, true, "GET", "/api/v1/users", nil)
	sc.call(integ, 403, true, "GET", "/api/v1/users/"+staffID, nil)

	// The caller's own sign-in settings.
	const mySecurity = "/api/v1/me/security"
	if m := sc.call(owner, 200, true, "GET", mySecurity, nil).JSON(t); m["login_2fa"] != true || m["method"] != "sms" || m["pin_set"] != false {
		t.Errorf("a new owner's sign-in settings: %v", m)
	}
	sc.call(integ, 403, true, "GET", mySecurity, nil)
	sc.call(anon, 401, true, "GET", mySecurity, nil)

	// An authenticator app: set up, confirmed, used to sign in, removed.
	const totpPath = "/api/v1/me/totp"
	wrongPassword := map[string]any{"current_password": "wrong-password-1"}
	rightPassword := map[string]any{"current_password": password}
	sc.call(owner, 403, true, "POST", totpPath, wrongPassword)
	sc.call(owner, 409, true, "POST", totpPath+"/confirm", map[string]any{"code": "123456"})
	sc.call(integ, 403, true, "POST", totpPath, rightPassword)
	sc.call(owner, 400, false, "POST", totpPath, map[string]any{"current_password": password, "issuer": "x"})
	enrolment := sc.call(owner, 201, true, "POST", totpPath, rightPassword).JSON(t)
	secret := enrolment["secret"].(string)
	if f := fieldErrors(t, sc.call(owner, 422, true, "POST", totpPath+"/confirm", map[string]any{"code": wrongTOTP(t, secret)})); !slices.Equal(f, []string{"code"}) {
		t.Errorf("confirm with a wrong code: errors on %v, want [code]", f)
	}
	confirmed := sc.call(owner, 200, true, "POST", totpPath+"/confirm", map[string]any{"code": totpCode(t, secret)}).JSON(t)
	recovery, _ := confirmed["recovery_codes"].([]any)
	if len(recovery) != 10 {
		t.Fatalf("confirm: want 10 recovery codes: %v", confirmed)
	}
	sc.call(owner, 409, true, "POST", totpPath, rightPassword)
	sc.call(owner, 409, true, "POST", totpPath+"/confirm", map[string]any{"code": totpCode(t, secret)})
	if m := sc.call(owner, 200, true, "GET", mySecurity, nil).JSON(t); m["method"] != "totp" {
		t.Errorf("method after confirming the app: %v", m)
	}
	byApp := sc.call(anon, 202, true, "POST", "/api/v1/auth/login", credentials).JSON(t)
	if byApp["channel"] != "totp" {
		t.Errorf("challenge after confirming the app: %v", byApp)
	}
	sc.call(anon, 409, true, "POST", resendPath, map[string]any{"challenge_id": byApp["challenge_id"]})
	sc.call(anon, 200, true, "POST", verifyPath, map[string]any{"challenge_id": byApp["challenge_id"], "recovery_code": strings.ToUpper(recovery[0].(string))})
	byApp = sc.call(anon, 202, true, "POST", "/api/v1/auth/login", credentials).JSON(t)
	sc.call(anon, 401, true, "POST", verifyPath, map[string]any{"challenge_id": byApp["challenge_id"], "recovery_code": recovery[0]})
	// Each step's code works once (the confirmation used this one): the
	// app's next code is still within the accepted window.
	sc.call(anon, 200, true, "POST", verifyPath, map[string]any{"challenge_id": byApp["challenge_id"], "code": totpCodeAt(t, secret, time.Now().Add(30*time.Second))})
	sc.call(owner, 403, true, "DELETE", totpPath, wrongPassword)
	sc.call(owner, 400, false, "DELETE", totpPath, nil)
	sc.call(owner, 204, true, "DELETE", totpPath, rightPassword)
	sc.call(owner, 409, true, "POST", totpPath+"/confirm", map[string]any{"code": totpCode(t, secret)})

	// Login 2FA off: the password alone signs in.
	sc.call(owner, 403, true, "PUT", mySecurity, map[string]any{"current_password": "wrong-password-1", "login_2fa": false})
	if f := fieldErrors(t, sc.call(owner, 422, false, "PUT", mySecurity, map[string]any{"current_password": password, "phone": "555", "email": "nope"})); !slices.Equal(f, []string{"phone", "email"}) {
		t.Errorf("PUT /me/security with a bad phone and email: errors on %v, want [phone email]", f)
	}
	sc.call(owner, 409, true, "PUT", mySecurity, map[string]any{"current_password": password, "email": staffEmail})
	sc.call(owner, 400, false, "PUT", mySecurity, map[string]any{"current_password": password, "method": "totp"})
	sc.call(integ, 403, true, "PUT", mySecurity, map[string]any{"current_password": password, "login_2fa": false})
	if m := sc.call(owner, 200, true, "PUT", mySecurity, map[string]any{"current_password": password, "login_2fa": false, "phone": nil, "email": nil}).JSON(t); m["login_2fa"] != false || m["method"] != "sms" {
		t.Errorf("after turning login 2FA off: %v", m)
	}
	sc.call(anon, 200, true, "POST", "/api/v1/auth/login", credentials)

	// The tenant's key-exchange policy, and PINs.
	const policyPath, pinPath = "/api/v1/security", "/api/v1/me/pin"
	sc.call(owner, 409, true, "PUT", pinPath, map[string]any{"pin": "5831"})
	if p := sc.call(owner, 200, true, "GET", policyPath, nil).JSON(t); p["owner_pickups_2fa"] != true || p["visitor_pickups"] != "sms" || len(p["warnings"].([]any)) != 0 {
		t.Errorf("a new tenant's policy: %v", p)
	}
	sc.call(integ, 403, true, "GET", policyPath, nil)
	sc.call(integ, 403, true, "PUT", policyPath, map[string]any{"visitor_pickups": "pin"})
	sc.call(anon, 401, true, "GET", policyPath, nil)
	if f := fieldErrors(t, sc.call(owner, 422, false, "PUT", policyPath, map[string]any{"visitor_pickups": "fax"})); !slices.Equal(f, []string{"visitor_pickups"}) {
		t.Errorf("PUT /security with visitor_pickups fax: errors on %v, want [visitor_pickups]", f)
	}
	sc.call(owner, 400, false, "PUT", policyPath, map[string]any{"owner_pickups_2fa": "no"})
	if p := sc.call(owner, 200, true, "PUT", policyPath, map[string]any{"visitor_pickups": "pin", "owner_pickups_2fa": nil}).JSON(t); p["visitor_pickups"] != "pin" || p["owner_pickups_2fa"] != true {
		t.Errorf("policy after choosing PINs: %v", p)
	}
	if f := fieldErrors(t, sc.call(owner, 422, true, "PUT", pinPath, map[string]any{"pin": "1234"})); !slices.Equal(f, []string{"pin"}) {
		t.Errorf("a common PIN: errors on %v, want [pin]", f)
	}
	sc.call(owner, 422, false, "PUT", pinPath, map[string]any{"pin": "12345"})
	sc.call(integ, 403, true, "PUT", pinPath, map[string]any{"pin": "5831"})
	sc.call(owner, 204, true, "PUT", pinPath, map[string]any{"pin": "5831"})
	if m := sc.call(owner, 200, true, "GET", mySecurity, nil).JSON(t); m["pin_set"] != true {
		t.Errorf("pin_set after PUT /me/pin: %v", m)
	}
	if p := sc.call(owner, 200, true, "PUT", policyPath, map[string]any{"owner_pickups_2fa": false}).JSON(t); p["owner_pickups_2fa"] != false || len(p["warnings"].([]any)) != 1 {
		t.Errorf("turning owner_pickups_2fa off gave no warning: %v", p)
	}

	// The audit log.
	const auditPath = "/api/v1/audit"
	entries := sc.call(owner, 200, true, "GET", auditPath, nil).JSON(t)["items"].([]any)
	if len(entries) == 0 {
		t.Fatal("the audit log is empty")
	}
	if e := entries[0].(map[string]any); e["action"] != "security.exchange_2fa_disabled" || e["actor"] != "user:"+ownerID || e["client_ip"] == "" {
		t.Errorf("the newest audit entry is not the policy change: %v", e)
	}
	since := url.QueryEscape(started.UTC().Format(time.RFC3339))
	logins := sc.call(owner, 200, true, "GET", auditPath+"?action=login.succeeded&actor=user:"+ownerID+"&since="+since+"&limit=1", nil).JSON(t)
	next, _ := logins["next_cursor"].(string)
	if next == "" {
		t.Fatalf("a full page of sign-ins has no next_cursor: %v", logins)
	}
	for _, it := range sc.call(owner, 200, true, "GET", auditPath+"?action=login.succeeded&cursor="+next, nil).JSON(t)["items"].([]any) {
		if e := it.(map[string]any); e["action"] != "login.succeeded" {
			t.Errorf("action filter let through %v", e)
		}
	}
	if f := fieldErrors(t, sc.call(owner, 422, false, "GET", auditPath+"?since=yesterday", nil)); !slices.Equal(f, []string{"since"}) {
		t.Errorf("bad since: errors on %v, want [since]", f)
	}
	sc.call(owner, 422, false, "GET", auditPath+"?limit=0", nil)
	sc.call(integ, 403, true, "GET", auditPath, nil)
	sc.call(anon, 401, true, "GET", auditPath, nil)

	// Messages. No workers run, so nothing is delivered, but the staff
	// invitation is queued.
	msgs := sc.call(owner, 200, true, "GET", "/api/v1/messages", nil).JSON(t)
	if items, _ := msgs["items"].([]any); len(items) == 0 {
		t.Errorf("messages: the staff invitation is not listed: %v", msgs)
	}
	sc.call(owner, 200, true, "GET", "/api/v1/messages?status=queued&channel=email&limit=1", nil)
	sc.call(owner, 200, true, "GET", "/api/v1/messages?status=delivered&channel=sms", nil)
	if f := fieldErrors(t, sc.call(owner, 422, false, "GET", "/api/v1/messages?status=bounced", nil)); !slices.Equal(f, []string{"status"}) {
		t.Errorf("bad status filter: errors on %v, want [status]", f)
	}
	sc.call(owner, 422, false, "GET", "/api/v1/messages?channel=fax", nil)
	sc.call(owner, 422, false, "GET", "/api/v1/messages?cursor=nope", nil)
	sc.call(owner, 200, true, "GET", "/api/v1/messages?status=canceled", nil)
	sc.call(integ, 403, true, "GET", "/api/v1/messages", nil)
	sc.call(anon, 401, true, "GET", "/api/v1/messages", nil)

	// Notification settings: a whole replacement, audited.
	const settingsPath = "/api/v1/notification-settings"
	if m := sc.call(owner, 200, true, "GET", settingsPath, nil).JSON(t); m["default_language"] != "en" || m["quiet_hours"] != nil {
		t.Errorf("a new tenant's notification settings: %v", m)
	}
	quiet := map[string]any{"default_language": "fr", "quiet_hours": map[string]any{"start": "22:00", "end": "7:30"}}
	if m := sc.call(owner, 200, true, "PUT", settingsPath, quiet).JSON(t); m["default_language"] != "fr" || !reflect.DeepEqual(m["quiet_hours"], map[string]any{"start": "22:00", "end": "07:30"}) {
		t.Errorf("notification settings after PUT: %v", m)
	}
	if e := sc.call(owner, 200, true, "GET", auditPath+"?limit=1", nil).JSON(t)["items"].([]any)[0].(map[string]any); e["action"] != "notifications.settings_changed" || e["target"] != "tenant:"+first.JSON(t)["tenant_id"].(string) {
		t.Errorf("the newest audit entry is not the settings change: %v", e)
	}
	badClock := map[string]any{"default_language": "en", "quiet_hours": map[string]any{"start": "25:00", "end": "08:00"}}
	if f := fieldErrors(t, sc.call(owner, 422, false, "PUT", settingsPath, badClock)); !slices.Equal(f, []string{"quiet_hours.start"}) {
		t.Errorf("a bad clock: errors on %v, want [quiet_hours.start]", f)
	}
	if f := fieldErrors(t, sc.call(owner, 422, false, "PUT", settingsPath, map[string]any{"default_language": "de", "quiet_hours": nil})); !slices.Equal(f, []string{"default_language"}) {
		t.Errorf("a bad language: errors on %v, want [default_language]", f)
	}
	sc.call(owner, 400, false, "PUT", settingsPath, map[string]any{"default_language": "en", "quiet_hours": map[string]any{"start": "22:00", "end": "08:00", "zone": "UTC"}})
	if m := sc.call(owner, 200, true, "GET", settingsPath, nil).JSON(t); m["default_language"] != "fr" || m["quiet_hours"] == nil {
		t.Errorf("a refused PUT changed the notification settings: %v", m)
	}
	sc.call(integ, 403, true, "GET", settingsPath, nil)
	sc.call(integ, 403, true, "PUT", settingsPath, map[string]any{"default_language": "en"})
	sc.call(anon, 401, true, "GET", settingsPath, nil)
	if m := sc.call(owner, 200, true, "PUT", settingsPath, map[string]any{"default_language": "en"}).JSON(t); m["default_language"] != "en" || m["quiet_hours"] != nil {
		t.Errorf("notification settings after removing quiet hours: %v", m)
	}

	// Providers.
	routeOf := func(a answer, channel string) map[string]any {
		t.Helper()
		for _, it := range a.JSON(t)["items"].([]any) {
			if r := it.(map[string]any); r["channel"] == channel {
				return r
			}
		}
		t.Fatalf("no %s route in %s", channel, a.Body)
		return nil
	}
	if r := routeOf(sc.call(owner, 200, true, "GET", "/api/v1/providers", nil), "email"); r["platform_default"] != true {
		t.Errorf("a new tenant's email route is not the platform default: %v", r)
	}
	dir := t.TempDir()
	put := sc.call(owner, 200, true, "PUT", "/api/v1/providers", map[string]any{"email": map[string]any{"provider": "devmailbox", "settings": map[string]any{"dir": dir}}})
	if r := routeOf(put, "email"); r["provider"] != "devmailbox" || r["platform_default"] != false || !reflect.DeepEqual(r["setting_keys"], []any{"dir"}) || r["fallback"] != nil {
		t.Errorf("email route after PUT: %v", r)
	}
	withFallback := map[string]any{"sms": map[string]any{"provider": "devmailbox", "settings": map[string]any{"dir": dir}, "use_default": false,
		"fallback": map[string]any{"provider": "webhook", "settings": map[string]any{"url": "https://example.com/keyrelay", "signing_secret": strings.Repeat("s", 32)}}}}
	if r := routeOf(sc.call(owner, 200, true, "PUT", "/api/v1/providers", withFallback), "sms"); r["fallback"] == nil {
		t.Errorf("sms route has no fallback after PUT: %v", r)
	}
	sc.call(owner, 200, true, "PUT", "/api/v1/providers", map[string]any{"sms": map[string]any{"provider": "devmailbox", "settings": map[string]any{"dir": dir}, "fallback": nil}})
	if r := routeOf(sc.call(owner, 200, true, "GET", "/api/v1/providers", nil), "sms"); r["fallback"] != nil {
		t.Errorf("a null fallback did not remove it: %v", r)
	}
	if r := routeOf(sc.call(owner, 200, true, "PUT", "/api/v1/providers", map[string]any{"sms": map[string]any{"use_default": true}}), "sms"); r["platform_default"] != true {
		t.Errorf("use_default did not restore the platform default: %v", r)
	}
	for _, tc := range []struct {
		body  map[string]any
		field string
	}{
		{map[string]any{"email": map[string]any{"provider": "nope", "settings": map[string]any{}}}, "email.provider"},                        // unknown
		{map[string]any{"email": map[string]any{"provider": "httpsms", "settings": map[string]any{}}}, "email.provider"},                     // sends no email
		{map[string]any{"email": map[string]any{"provider": "devmailbox", "settings": map[string]any{"dir": "relative"}}}, "email.provider"}, // settings refused
		{map[string]any{"email": map[string]any{"provider": ""}}, "email.provider"},
		{map[string]any{"sms": map[string]any{"provider": "devmailbox", "settings": map[string]any{"dir": dir}, "fallback": map[string]any{"provider": "devmailbox", "settings": map[string]any{"dir": dir}}}}, "sms.fallback.provider"},
	} {
		if f := fieldErrors(t, sc.call(owner, 422, true, "PUT", "/api/v1/providers", tc.body)); !slices.Contains(f, tc.field) {
			t.Errorf("PUT %v: errors on %v, want %s", tc.body, f, tc.field)
		}
	}
	if f := fieldErrors(t, sc.call(owner, 422, false, "PUT", "/api/v1/providers", map[string]any{"fax": map[string]any{"provider": "devmailbox"}})); !slices.Equal(f, []string{"fax"}) {
		t.Errorf("unknown channel: errors on %v, want [fax]", f)
	}
	sc.call(owner, 400, false, "PUT", "/api/v1/providers", map[string]any{"email": map[string]any{"provider": "devmailbox", "region": "eu"}})
	sc.call(owner, 400, false, "PUT", "/api/v1/providers", map[string]any{"email": map[string]any{"provider": "devmailbox", "settings": map[string]any{"port": 25}}})
	sc.call(owner, 400, false, "PUT", "/api/v1/providers", "[]")
	if r := routeOf(sc.call(owner, 200, true, "GET", "/api/v1/providers", nil), "email"); r["provider"] != "devmailbox" || r["platform_default"] != false {
		t.Errorf("a refused PUT changed the email route: %v", r)
	}
	sc.call(integ, 403, true, "GET", "/api/v1/providers", nil)
	sc.call(integ, 403, true, "PUT", "/api/v1/providers", map[string]any{"email": map[string]any{"use_default": true}})
	sc.call(anon, 401, true, "PUT", "/api/v1/providers", map[string]any{"email": map[string]any{"use_default": true}})

	// Provider receipts, outside /api/v1: the plugin judges the request.
	sc.call(anon, 404, true, "POST", "/hooks/providers/nope", "{}")
	sc.call(anon, 401, true, "POST", "/hooks/providers/httpsms", "MessageSid=SM1&MessageStatus=delivered", "Content-Type", "application/x-www-form-urlencoded")

	// The development mailbox, outside /api/v1, lists what the platform's
	// devmailbox kept.
	tenantID := first.JSON(t)["tenant_id"].(string)
	kept := sdk.Message{MessageID: uuid.NewString(), TenantID: tenantID, Channel: sdk.ChannelEmail, To: email, Subject: "Your code", Text: "123456",
		Settings: map[string]string{devmailbox.SettingDir: s.app.cfg.mailboxDir()}}
	if _, err := devmailbox.New().Send(context.Background(), kept); err != nil {
		t.Fatal(err)
	}
	var box []devMailboxEntry
	if err := json.Unmarshal(sc.call(anon, 200, true, "GET", "/dev/mailbox?tenant_id="+tenantID+"&to="+url.QueryEscape(email), nil).Body, &box); err != nil {
		t.Fatal(err)
	}
	if len(box) != 1 || box[0].ID != kept.MessageID || box[0].Body != kept.Text {
		t.Errorf("mailbox: %+v, want the one message kept", box)
	}
	sc.call(anon, 200, true, "GET", "/dev/mailbox?to=nobody@example.com", nil)
	if page := sc.send(anon, "GET", "/dev/mailbox", nil, "Accept", "text/html"); page.Status != 200 || !strings.HasPrefix(page.Header.Get("Content-Type"), "text/html") {
		t.Errorf("mailbox page: %d %s", page.Status, page.Header.Get("Content-Type"))
	}
	sc.call(owner, 204, true, "DELETE", "/api/v1/api-keys/"+created["id"].(string), nil)
	sc.call(owner, 204, true, "DELETE", "/api/v1/api-keys/"+created["id"].(string), nil)
	sc.call(owner, 404, true, "DELETE", "/api/v1/api-keys/"+uuid.NewString(), nil)
	sc.call(integ, 401, true, "GET", "/api/v1/users/"+staffID, nil)

	// Passwords.
	sc.call(anon, 202, true, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": email})
	sc.call(anon, 422, true, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": "not an address"})
	sc.call(anon, 422, true, "POST", "/api/v1/auth/password/reset", map[string]any{"token": "krr_nope", "new_password": "another-horse-43"})
	sc.call(owner, 403, true, "PUT", "/api/v1/me/password", map[string]any{"current_password": "wrong-password-1", "new_password": "another-horse-43"})
	sc.call(owner, 422, true, "PUT", "/api/v1/me/password", map[string]any{"current_password": password, "new_password": "password1"})
	sc.call(owner, 204, true, "PUT", "/api/v1/me/password", map[string]any{"current_password": password, "new_password": "another-horse-43"})

	sc.call(owner, 204, true, "POST", "/api/v1/auth/logout", nil)
	sc.call(owner, 401, true, "GET", "/api/v1/me", nil)

	// After a password change the next sign-in asks for a code, login 2FA
	// off or not.
	renewed, challenged := sc.signIn(email, "another-horse-43")
	if !challenged {
		t.Error("the sign-in after a password change asked for no code")
	}
	sc.call(renewed, 200, true, "GET", "/api/v1/me", nil)

	t.Run("MailboxHiddenInProduction", func(t *testing.T) {
		s := startServer(t, func(c *Config) { c.Env = "production" })
		sc := &specCheck{t: t, url: s.url, doc: doc, ops: sc.ops}
		sc.call(anon, 404, true, "GET", "/dev/mailbox", nil)
	})

	// Sign-in calls are rate-limited per address, with Retry-After.
	t.Run("RateLimited", func(t *testing.T) {
		s := startServer(t, func(c *Config) { c.AuthRateLimit = "3-M" })
		sc := &specCheck{t: t, url: s.url, doc: doc, ops: sc.ops}
		var c caller
		for range 10 {
			r := sc.send(c, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": "nope"})
			if r.Status == http.StatusTooManyRequests {
				break
			}
		}
		r := sc.call(c, 429, true, "POST", "/api/v1/auth/login", map[string]any{"email": email, "password": password})
		if r.Header.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
	})
}
