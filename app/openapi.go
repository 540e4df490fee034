package main

import (
	"cmp"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"slices"

	"github.com/gofiber/fiber/v2"
)

// The OpenAPI document of /api/v1 is kept as one file per domain under
// openapi/: base.json holds the document's frame (info, servers, security,
// shared components) and the accounts and notification calls; every other
// file adds its domain's tags, paths and components. A test fails when a
// registered route is missing from the merged document, so it cannot
// silently fall behind the route table.
//
//go:embed openapi/*.json
var openAPIFiles embed.FS

// buildOpenAPI merges the files into the served document. Two files that
// define the same path or component are an error, not a silent overwrite.
func buildOpenAPI() ([]byte, error) {
	names, err := fs.Glob(openAPIFiles, "openapi/*.json")
	if err != nil {
		return nil, err
	}
	// base.json first, the rest in name order, so the output is stable.
	slices.SortFunc(names, func(a, b string) int {
		switch {
		case a == "openapi/base.json":
			return -1
		case b == "openapi/base.json":
			return 1
		}
		return cmp.Compare(a, b)
	})
	var doc map[string]any
	for _, name := range names {
		raw, err := openAPIFiles.ReadFile(name)
		if err != nil {
			return nil, err
		}
		var part map[string]any
		if err := json.Unmarshal(raw, &part); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if doc == nil {
			doc = part
			continue
		}
		if err := mergeOpenAPI(doc, part, name); err != nil {
			return nil, err
		}
	}
	return json.MarshalIndent(doc, "", "  ")
}

// mergeOpenAPI adds a fragment's tags, paths and components to doc.
func mergeOpenAPI(doc, part map[string]any, name string) error {
	for key, v := range part {
		switch key {
		case "tags":
			tags, _ := doc["tags"].([]any)
			more, _ := v.([]any)
			doc["tags"] = append(tags, more...)
		case "paths":
			if err := mergeMap(doc, "paths", v, name); err != nil {
				return err
			}
		case "components":
			comps, _ := doc["components"].(map[string]any)
			if comps == nil {
				comps = map[string]any{}
				doc["components"] = comps
			}
			more, _ := v.(map[string]any)
			for kind, defs := range more {
				if err := mergeMap(comps, kind, defs, name+": components"); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("%s: a fragment may hold only tags, paths and components, not %q", name, key)
		}
	}
	return nil
}

func mergeMap(into map[string]any, key string, v any, where string) error {
	dst, _ := into[key].(map[string]any)
	if dst == nil {
		dst = map[string]any{}
		into[key] = dst
	}
	src, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("%s: %s must be an object", where, key)
	}
	for k, def := range src {
		if _, dup := dst[k]; dup {
			return fmt.Errorf("%s: %s %q is defined twice", where, key, k)
		}
		dst[k] = def
	}
	return nil
}

// serveOpenAPI serves the merged document.
func serveOpenAPI(doc []byte) fiber.Handler {
	return func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
		c.Set(fiber.HeaderCacheControl, "public, max-age=300")
		return c.Send(doc)
	}
}
