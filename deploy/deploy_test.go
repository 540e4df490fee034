// Package deploy_test checks the deployment files against the Kubernetes API
// types, the image's Dockerfile, the compose file and the bundled plugins,
// so that a typo fails CI instead of the first rollout. No cluster and no
// Docker daemon are needed.
package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/keyrelay/keyrelay/plugins/host"
)

// fleet is the rendered kustomization, decoded.
type fleet struct {
	namespaces  []corev1.Namespace
	configMaps  map[string]corev1.ConfigMap
	pvcs        map[string]corev1.PersistentVolumeClaim
	deployments map[string]appsv1.Deployment
	jobs        map[string]batchv1.Job
	services    map[string]corev1.Service
	pdbs        map[string]policyv1.PodDisruptionBudget
	hpas        map[string]autoscalingv2.HorizontalPodAutoscaler
}

// decodeStrict decodes one object, refusing unknown and duplicate fields:
// "readinesProbe" or a misplaced key is an error, not silently dropped.
func decodeStrict(doc []byte, into any) error {
	return yaml.UnmarshalStrict(doc, into)
}

// decodeNamed decodes doc strictly into objects[name].
func decodeNamed[T any](doc []byte, name string, objects map[string]T) error {
	var o T
	err := decodeStrict(doc, &o)
	objects[name] = o
	return err
}

func render(t *testing.T) fleet {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), "kubernetes")
	if err != nil {
		t.Fatalf("kustomize build deploy/kubernetes: %v", err)
	}
	f := fleet{
		configMaps: map[string]corev1.ConfigMap{}, pvcs: map[string]corev1.PersistentVolumeClaim{},
		deployments: map[string]appsv1.Deployment{}, jobs: map[string]batchv1.Job{},
		services: map[string]corev1.Service{}, pdbs: map[string]policyv1.PodDisruptionBudget{},
		hpas: map[string]autoscalingv2.HorizontalPodAutoscaler{},
	}
	for _, r := range rm.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		gvk := r.GetApiVersion() + " " + r.GetKind()
		name := r.GetName()
		var derr error
		switch gvk {
		case "v1 Namespace":
			var o corev1.Namespace
			derr = decodeStrict(doc, &o)
			f.namespaces = append(f.namespaces, o)
		case "v1 ConfigMap":
			derr = decodeNamed(doc, name, f.configMaps)
		case "v1 PersistentVolumeClaim":
			derr = decodeNamed(doc, name, f.pvcs)
		case "v1 Service":
			derr = decodeNamed(doc, name, f.services)
		case "apps/v1 Deployment":
			derr = decodeNamed(doc, name, f.deployments)
		case "batch/v1 Job":
			derr = decodeNamed(doc, name, f.jobs)
		case "policy/v1 PodDisruptionBudget":
			derr = decodeNamed(doc, name, f.pdbs)
		case "autoscaling/v2 HorizontalPodAutoscaler":
			derr = decodeNamed(doc, name, f.hpas)
		default:
			t.Errorf("%s %s: no strict decoding for this kind in deploy_test.go; add it", gvk, name)
			continue
		}
		if derr != nil {
			t.Errorf("%s %s does not decode strictly: %v", gvk, name, derr)
		}
	}
	return f
}

// TestStrictDecodingCatchesTypos keeps the decoder honest: if it ever
// stopped refusing unknown fields, every other check here would pass on
// manifests Kubernetes would silently half-apply.
func TestStrictDecodingCatchesTypos(t *testing.T) {
	typo := []byte(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers:
        - name: x
          image: x
          readinesProbe: {httpGet: {path: /readyz, port: 8080}}
`)
	if err := decodeStrict(typo, &appsv1.Deployment{}); err == nil || !strings.Contains(err.Error(), "readinesProbe") {
		t.Fatalf("a misspelt field decoded without error (%v)", err)
	}
	dup := []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {A: \"1\", A: \"2\"}\n")
	if err := decodeStrict(dup, &corev1.ConfigMap{}); err == nil {
		t.Fatal("a duplicate key decoded without error")
	}
}

// requiredInProduction lists the settings app/config.go refuses to start
// without in production, read from its error messages, so a new required
// setting fails this test until the manifests provide it.
func requiredInProduction(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "app", "config.go"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`"(KEYRELAY_[A-Z0-9_]+) (?:is required|must)`)
	var names []string
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		if !slices.Contains(names, m[1]) {
			names = append(names, m[1])
		}
	}
	// If the messages are reworded the regexp finds fewer; these six were
	// required when this test was written.
	for _, n := range []string{"KEYRELAY_SECRET_KEY", "KEYRELAY_OPERATOR_TOKEN", "KEYRELAY_BASE_URL",
		"KEYRELAY_PLUGINS_DIR", "KEYRELAY_DEFAULT_PROVIDERS", "KEYRELAY_ROOT_PUBLIC_KEY"} {
		if !slices.Contains(names, n) {
			t.Fatalf("app/config.go no longer says %s is required or must be something; update requiredInProduction (found %v)", n, names)
		}
	}
	return names
}

// secretSettings must never come from a ConfigMap or a literal.
var secretSettings = []string{"KEYRELAY_SECRET_KEY", "KEYRELAY_OPERATOR_TOKEN", "KEYRELAY_DATABASE_URL",
	"KEYRELAY_APP_DATABASE_URL", "KEYRELAY_DATABASE_REPLICA_URL", "KEYRELAY_REDIS_URL", "KEYRELAY_DEFAULT_PROVIDERS"}

// secretKeys reads the keys of the Secrets secret.example.yaml documents.
func secretKeys(t *testing.T) map[string][]string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("kubernetes", "secret.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, doc := range bytes.Split(raw, []byte("\n---\n")) {
		var s corev1.Secret
		if err := decodeStrict(doc, &s); err != nil {
			t.Fatalf("secret.example.yaml: %v", err)
		}
		out[s.Name] = nil
		for k := range s.StringData {
			out[s.Name] = append(out[s.Name], k)
		}
	}
	return out
}

// envSource says where a container's variable comes from: "configmap",
// "secret", "literal", or "" when it is not set.
func envSource(t *testing.T, f fleet, c corev1.Container, name string, secrets map[string][]string) (string, string) {
	t.Helper()
	for _, e := range c.Env {
		if e.Name != name {
			continue
		}
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			keys, ok := secrets[ref.Name]
			if !ok || !slices.Contains(keys, ref.Key) {
				t.Errorf("%s: %s reads Secret %s key %s, which secret.example.yaml does not document", c.Name, name, ref.Name, ref.Key)
			}
			return "secret", ref.Name
		case e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil:
			return "configmap", e.ValueFrom.ConfigMapKeyRef.Name
		default:
			return "literal", e.Value
		}
	}
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef != nil {
			cm, ok := f.configMaps[from.ConfigMapRef.Name]
			if !ok {
				t.Errorf("%s: envFrom ConfigMap %s is not in the kustomization", c.Name, from.ConfigMapRef.Name)
				continue
			}
			if v, ok := cm.Data[name]; ok {
				return "configmap", v
			}
		}
		if from.SecretRef != nil {
			t.Errorf("%s: envFrom a whole Secret (%s) hides which keys it needs; name them", c.Name, from.SecretRef.Name)
		}
	}
	return "", ""
}

func TestKubernetesManifests(t *testing.T) {
	f := render(t)
	secrets := secretKeys(t)
	required := requiredInProduction(t)

	cm, ok := f.configMaps["keyrelay"]
	if !ok {
		t.Fatal("no ConfigMap keyrelay")
	}
	if cm.Data["KEYRELAY_ENV"] != "production" || !strings.HasPrefix(cm.Data["KEYRELAY_BASE_URL"], "https://") {
		t.Errorf("ConfigMap: KEYRELAY_ENV=%q KEYRELAY_BASE_URL=%q, want production and https", cm.Data["KEYRELAY_ENV"], cm.Data["KEYRELAY_BASE_URL"])
	}
	if cm.Data["KEYRELAY_WORKERS"] != "separate" {
		t.Errorf("ConfigMap: KEYRELAY_WORKERS=%q, want separate (the worker Deployment does the background work)", cm.Data["KEYRELAY_WORKERS"])
	}
	_, metricsPort, err := net.SplitHostPort(cm.Data["KEYRELAY_METRICS_LISTEN"])
	if err != nil {
		t.Errorf("ConfigMap: KEYRELAY_METRICS_LISTEN=%q: %v", cm.Data["KEYRELAY_METRICS_LISTEN"], err)
	}

	wantArgs := map[string]string{"keyrelay-serve": "serve", "keyrelay-worker": "worker"}
	if len(f.deployments) != len(wantArgs) {
		t.Errorf("deployments %v, want %v", keys(f.deployments), wantArgs)
	}
	images := map[string]bool{}
	for name, d := range f.deployments {
		pod := d.Spec.Template.Spec
		if d.Spec.Replicas != nil {
			t.Errorf("%s: spec.replicas is set; the HorizontalPodAutoscaler owns it (an apply would reset it)", name)
		}
		checkPod(t, name, pod, cm, images)
		if len(pod.Containers) != 1 {
			t.Fatalf("%s: %d containers, want 1", name, len(pod.Containers))
		}
		c := pod.Containers[0]
		if want := wantArgs[name]; !slices.Equal(c.Args, []string{want}) || len(c.Command) > 0 {
			t.Errorf("%s runs command %v args %v, want the image's entrypoint with [%s]", name, c.Command, c.Args, want)
		}
		if c.ReadinessProbe == nil || c.LivenessProbe == nil {
			t.Errorf("%s: readiness and liveness probes are required", name)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: needs CPU and memory requests and a memory limit (the HPA scales against the CPU request): %v", name, c.Resources)
		}
		if !hasPort(c, metricsPort) {
			t.Errorf("%s: container does not declare the metrics port %s", name, metricsPort)
		}
		if d.Spec.Template.Annotations["prometheus.io/port"] != metricsPort {
			t.Errorf("%s: pod annotation prometheus.io/port=%q, want %s", name, d.Spec.Template.Annotations["prometheus.io/port"], metricsPort)
		}
		for _, v := range append(required, "KEYRELAY_APP_DATABASE_URL", "KEYRELAY_REDIS_URL") {
			checkSetting(t, f, c, v, secrets)
		}
		if src, _ := envSource(t, f, c, "KEYRELAY_DATABASE_URL", secrets); src != "" {
			t.Errorf("%s: has the owner's KEYRELAY_DATABASE_URL; only the migration Job may", name)
		}
		if !selects(f.pdbSelectors(), d.Spec.Template.Labels) {
			t.Errorf("%s: no PodDisruptionBudget selects its pods", name)
		}
		hpa, ok := f.hpas[name]
		if !ok || hpa.Spec.ScaleTargetRef.Kind != "Deployment" || hpa.Spec.ScaleTargetRef.Name != name {
			t.Errorf("%s: no HorizontalPodAutoscaler targets it", name)
		} else if len(hpa.Spec.Metrics) == 0 || hpa.Spec.Metrics[0].Resource == nil || hpa.Spec.Metrics[0].Resource.Name != corev1.ResourceCPU {
			t.Errorf("%s: its HPA does not scale on CPU", name)
		}
	}
	serve := f.deployments["keyrelay-serve"].Spec.Template.Spec.Containers
	if len(serve) == 1 && (serve[0].ReadinessProbe == nil || serve[0].ReadinessProbe.HTTPGet == nil || serve[0].ReadinessProbe.HTTPGet.Path != "/readyz" ||
		serve[0].LivenessProbe == nil || serve[0].LivenessProbe.HTTPGet == nil || serve[0].LivenessProbe.HTTPGet.Path != "/healthz") {
		t.Error("keyrelay-serve: readiness must be /readyz and liveness /healthz (a database outage must not restart the fleet)")
	}

	job, ok := f.jobs["keyrelay-migrate"]
	if !ok {
		t.Fatal("no migration Job keyrelay-migrate")
	}
	checkPod(t, job.Name, job.Spec.Template.Spec, cm, images)
	jc := job.Spec.Template.Spec.Containers[0]
	if !slices.Equal(jc.Args, []string{"migrate"}) || len(jc.Command) > 0 {
		t.Errorf("the Job runs command %v args %v, want [migrate]", jc.Command, jc.Args)
	}
	if job.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("the Job's restartPolicy is %q, want Never", job.Spec.Template.Spec.RestartPolicy)
	}
	if job.Annotations["argocd.argoproj.io/hook"] != "PreSync" {
		t.Error("the Job is not an Argo CD PreSync hook: it would run alongside the rollout instead of before it")
	}
	for _, v := range append(required, "KEYRELAY_DATABASE_URL", "KEYRELAY_APP_DATABASE_URL", "KEYRELAY_REDIS_URL") {
		checkSetting(t, f, jc, v, secrets)
	}
	if src, name := envSource(t, f, jc, "KEYRELAY_DATABASE_URL", secrets); src != "secret" || name != "keyrelay-owner" {
		t.Errorf("the Job's KEYRELAY_DATABASE_URL comes from %s %s, want the Secret keyrelay-owner", src, name)
	}
	if len(images) != 1 {
		t.Errorf("the Job and the Deployments run different images %v; the Job must migrate for the release it precedes", keys(images))
	}
	for img := range images {
		if !strings.Contains(img, ":") || strings.HasSuffix(img, ":latest") {
			t.Errorf("image %q: pin a tag (kustomization images:)", img)
		}
	}

	for name, s := range f.services {
		if !selects([]map[string]string{s.Spec.Selector}, f.deployments["keyrelay-serve"].Spec.Template.Labels) {
			t.Errorf("Service %s does not select the serve pods", name)
		}
	}
	ms, ok := f.services["keyrelay-metrics"]
	if !ok || ms.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Error("no headless Service keyrelay-metrics for Prometheus")
	} else if !selects([]map[string]string{ms.Spec.Selector}, f.deployments["keyrelay-worker"].Spec.Template.Labels) {
		t.Error("Service keyrelay-metrics does not select the worker pods")
	} else if job.Spec.Template.Labels != nil && selects([]map[string]string{ms.Spec.Selector}, job.Spec.Template.Labels) {
		t.Error("Service keyrelay-metrics selects the migration Job, which has no metrics listener")
	}
	for _, p := range f.services["keyrelay"].Spec.Ports {
		if p.TargetPort.String() == "metrics" || p.TargetPort.String() == metricsPort {
			t.Error("Service keyrelay exposes the unauthenticated metrics port to the ingress")
		}
	}
}

// TestConnectionBudget keeps the pool size, the autoscalers' maxima and
// the budget deploy/README.md states in step: every serve and worker pod
// takes KEYRELAY_DB_MAX_CONNS from the ConfigMap (a value app/config.go
// accepts), and (serve max + worker max) × pool is the number the README
// tells PgBouncer and PostgreSQL to allow. The optional replica URL comes
// from a Secret.
func TestConnectionBudget(t *testing.T) {
	f := render(t)
	secrets := secretKeys(t)
	cm := f.configMaps["keyrelay"]
	pool, err := strconv.Atoi(cm.Data["KEYRELAY_DB_MAX_CONNS"])
	if err != nil || pool < 1 || pool > 1000 {
		t.Fatalf("ConfigMap: KEYRELAY_DB_MAX_CONNS=%q, want 1 to 1000", cm.Data["KEYRELAY_DB_MAX_CONNS"])
	}
	if idle, err := strconv.Atoi(cm.Data["KEYRELAY_DB_MAX_IDLE_CONNS"]); err != nil || idle < 0 || idle > pool {
		t.Errorf("ConfigMap: KEYRELAY_DB_MAX_IDLE_CONNS=%q, want 0 to %d", cm.Data["KEYRELAY_DB_MAX_IDLE_CONNS"], pool)
	}
	for name, d := range f.deployments {
		c := d.Spec.Template.Spec.Containers[0]
		if src, v := envSource(t, f, c, "KEYRELAY_DB_MAX_CONNS", secrets); src != "configmap" || v != strconv.Itoa(pool) {
			t.Errorf("%s: KEYRELAY_DB_MAX_CONNS from %s %q; the budget counts the ConfigMap's %d for every pod", name, src, v, pool)
		}
		if src, secret := envSource(t, f, c, "KEYRELAY_DATABASE_REPLICA_URL", secrets); src != "secret" || secret != "keyrelay" {
			t.Errorf("%s: KEYRELAY_DATABASE_REPLICA_URL from %s %s, want the Secret keyrelay (optional)", name, src, secret)
		}
	}
	serveMax, workerMax := int(f.hpas["keyrelay-serve"].Spec.MaxReplicas), int(f.hpas["keyrelay-worker"].Spec.MaxReplicas)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("(%d serve + %d worker) × %d = **%d**", serveMax, workerMax, pool, (serveMax+workerMax)*pool)
	if !strings.Contains(string(readme), want) {
		t.Errorf("deploy/README.md does not state the connection budget the manifests make, %q", want)
	}
}

func (f fleet) pdbSelectors() []map[string]string {
	var out []map[string]string
	for _, p := range f.pdbs {
		if p.Spec.Selector != nil {
			out = append(out, p.Spec.Selector.MatchLabels)
		}
	}
	return out
}

func selects(selectors []map[string]string, labels map[string]string) bool {
	for _, sel := range selectors {
		if len(sel) == 0 {
			continue
		}
		ok := true
		for k, v := range sel {
			if labels[k] != v {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func hasPort(c corev1.Container, port string) bool {
	for _, p := range c.Ports {
		if fmt.Sprint(p.ContainerPort) == port {
			return true
		}
	}
	return false
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// checkSetting fails unless the container gets the variable, and a secret
// one from a Secret.
func checkSetting(t *testing.T, f fleet, c corev1.Container, name string, secrets map[string][]string) {
	t.Helper()
	src, _ := envSource(t, f, c, name, secrets)
	switch {
	case src == "":
		t.Errorf("container %s: %s is required in production and set neither from the ConfigMap nor from a Secret", c.Name, name)
	case slices.Contains(secretSettings, name) && src != "secret":
		t.Errorf("container %s: %s comes from a %s; it is secret, use a Secret", c.Name, name, src)
	case src == "literal":
		t.Errorf("container %s: %s is a literal; put it in the ConfigMap", c.Name, name)
	}
}

// checkPod checks what every keyrelay pod needs: non-root, a read-only root
// filesystem with a writable /tmp for the plugins' sockets, the volumes
// the settings point at, and one image.
func checkPod(t *testing.T, name string, pod corev1.PodSpec, cm corev1.ConfigMap, images map[string]bool) {
	t.Helper()
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
		t.Errorf("%s: pod securityContext.runAsNonRoot must be true", name)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("%s: keyrelay never talks to the Kubernetes API; set automountServiceAccountToken: false", name)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	for _, c := range pod.Containers {
		images[c.Image] = true
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s/%s: securityContext.readOnlyRootFilesystem must be true", name, c.Name)
		}
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s/%s: securityContext.allowPrivilegeEscalation must be false", name, c.Name)
		}
		mounts := map[string]corev1.VolumeMount{}
		for _, m := range c.VolumeMounts {
			if _, ok := volumes[m.Name]; !ok {
				t.Errorf("%s/%s: mounts volume %s, which the pod does not declare", name, c.Name, m.Name)
			}
			mounts[m.MountPath] = m
		}
		if c.Args[0] == "migrate" {
			continue // no plugins, keys or firmware
		}
		if m, ok := mounts["/tmp"]; !ok || volumes[m.Name].EmptyDir == nil {
			t.Errorf("%s/%s: needs an emptyDir on /tmp: the plugins' Unix sockets go there and the root filesystem is read-only", name, c.Name)
		}
		if m, ok := mounts[cm.Data["KEYRELAY_KEYS_DIR"]]; !ok || !m.ReadOnly || volumes[m.Name].Secret == nil {
			t.Errorf("%s/%s: KEYRELAY_KEYS_DIR=%q must be a read-only Secret volume", name, c.Name, cm.Data["KEYRELAY_KEYS_DIR"])
		}
		if m, ok := mounts[cm.Data["KEYRELAY_FIRMWARE_DIR"]]; !ok || m.ReadOnly || volumes[m.Name].PersistentVolumeClaim == nil {
			t.Errorf("%s/%s: KEYRELAY_FIRMWARE_DIR=%q must be a writable PersistentVolumeClaim", name, c.Name, cm.Data["KEYRELAY_FIRMWARE_DIR"])
		}
	}
}

func TestFirmwareVolumeIsShared(t *testing.T) {
	f := render(t)
	for name, d := range f.deployments {
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.PersistentVolumeClaim == nil {
				continue
			}
			pvc, ok := f.pvcs[v.PersistentVolumeClaim.ClaimName]
			if !ok {
				t.Errorf("%s: claim %s is not in the kustomization", name, v.PersistentVolumeClaim.ClaimName)
			} else if !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteMany) {
				t.Errorf("claim %s: replicas on different nodes share it, it must be ReadWriteMany", pvc.Name)
			}
		}
	}
}

// instruction is one Dockerfile instruction with its continuation lines
// joined.
type instruction struct {
	cmd, args string
}

func parseDockerfile(t *testing.T) []instruction {
	t.Helper()
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var out []instruction
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if s, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	if cur.Len() > 0 {
		t.Fatalf("Dockerfile ends in a continuation: %q", cur.String())
	}
	return out
}

func TestDockerfile(t *testing.T) {
	ins := parseDockerfile(t)
	// stages: the name of each FROM, and the final stage's instructions
	var stages []string
	var final []instruction
	for _, in := range ins {
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			if len(f) != 3 || !strings.EqualFold(f[1], "AS") {
				t.Errorf("FROM %s: name every stage (FROM image AS name)", in.args)
				continue
			}
			stages = append(stages, f[2])
			if strings.HasSuffix(f[0], ":latest") || !strings.Contains(f[0], ":") {
				t.Errorf("FROM %s: pin the base image's tag", f[0])
			}
			final = nil
			continue
		}
		final = append(final, in)
	}
	if !slices.Equal(stages, []string{"build", "runtime"}) {
		t.Fatalf("stages %v, want [build runtime]", stages)
	}
	if !strings.HasPrefix(fromOf(ins, "build"), "golang:1.26") {
		t.Errorf("build stage from %s, want golang:1.26 (go.mod's Go)", fromOf(ins, "build"))
	}
	all := func(cmd string) []string {
		var out []string
		for _, in := range final {
			if in.cmd == cmd {
				out = append(out, in.args)
			}
		}
		return out
	}
	joined := func(cmd string) string { return strings.Join(all(cmd), "\n") }

	// The static binary and the plugins are built in the build stage.
	buildRuns := ""
	for _, in := range ins[:slices.IndexFunc(ins, func(in instruction) bool { return in.cmd == "FROM" && strings.HasSuffix(in.args, "runtime") })] {
		if in.cmd == "RUN" {
			buildRuns += in.args + "\n"
		}
	}
	if !regexp.MustCompile(`CGO_ENABLED=0 go build [^\n]*-o /out/keyrelay \./app`).MatchString(buildRuns) {
		t.Error("the build stage does not build ./app statically (CGO_ENABLED=0 go build … -o /out/keyrelay ./app)")
	}
	if !strings.Contains(buildRuns, "go run ./deploy/bundleplugins -out /out/opt/keyrelay/plugins -dev /out/opt/keyrelay/plugins-dev") {
		t.Error("the build stage does not bundle the plugins with deploy/bundleplugins into /out/opt/keyrelay")
	}

	copies := joined("COPY")
	for _, want := range []string{"--from=build /out/keyrelay /usr/local/bin/keyrelay", "--from=build /out/opt/keyrelay /opt/keyrelay"} {
		if !strings.Contains(copies, want) {
			t.Errorf("runtime stage lacks COPY %s", want)
		}
	}
	env := joined("ENV")
	for _, want := range []string{"KEYRELAY_PLUGINS_DIR=/opt/keyrelay/plugins ", "KEYRELAY_LISTEN=0.0.0.0:8080", "KEYRELAY_FIRMWARE_DIR=/var/lib/keyrelay/firmware", "TMPDIR=/tmp"} {
		if !strings.Contains(env+" ", want) {
			t.Errorf("runtime ENV lacks %s", want)
		}
	}
	if u := all("USER"); len(u) != 1 || u[0] != "10001:10001" {
		t.Errorf("USER %v, want 10001:10001 (numeric, so runAsNonRoot can verify it)", u)
	}
	hc := all("HEALTHCHECK")
	if len(hc) != 1 || !strings.Contains(hc[0], `CMD ["curl"`) || !strings.Contains(hc[0], "http://127.0.0.1:8080/readyz") {
		t.Errorf("HEALTHCHECK %v, want an exec-form curl of /readyz on the default port", hc)
	}
	if !strings.Contains(joined("RUN"), "curl") {
		t.Error("the HEALTHCHECK uses curl but the runtime stage does not install it")
	}
	if e := all("ENTRYPOINT"); len(e) != 1 || e[0] != `["/usr/local/bin/keyrelay"]` {
		t.Errorf("ENTRYPOINT %v, want the exec form [\"/usr/local/bin/keyrelay\"] (so serve, worker, migrate are the command and SIGTERM reaches keyrelay)", e)
	}
	if c := all("CMD"); len(c) != 1 || c[0] != `["serve"]` {
		t.Errorf("CMD %v, want [\"serve\"]", c)
	}
	if s := all("STOPSIGNAL"); len(s) != 1 || s[0] != "SIGTERM" {
		t.Errorf("STOPSIGNAL %v, want SIGTERM", s)
	}
	// compose and the Kubernetes manifests rely on these paths.
	for _, p := range []string{"/var/lib/keyrelay/state", "/var/lib/keyrelay/firmware"} {
		if !strings.Contains(joined("RUN"), p) {
			t.Errorf("the runtime stage does not create %s for user keyrelay", p)
		}
	}
}

func fromOf(ins []instruction, stage string) string {
	for _, in := range ins {
		if f := strings.Fields(in.args); in.cmd == "FROM" && len(f) == 3 && f[2] == stage {
			return f[0]
		}
	}
	return ""
}

// composeFile is the part of compose.yaml checked here.
type composeFile struct {
	Services map[string]struct {
		Image       string            `json:"image"`
		Command     []string          `json:"command"`
		ReadOnly    bool              `json:"read_only"`
		Tmpfs       []string          `json:"tmpfs"`
		Environment map[string]string `json:"environment"`
		DependsOn   map[string]struct {
			Condition string `json:"condition"`
		} `json:"depends_on"`
		Healthcheck struct {
			Test    []string `json:"test"`
			Disable bool     `json:"disable"`
		} `json:"healthcheck"`
	} `json:"services"`
}

func TestCompose(t *testing.T) {
	raw, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for _, s := range []string{"postgres", "redis", "mailpit", "migrate", "keyrelay", "worker"} {
		if _, ok := c.Services[s]; !ok {
			t.Errorf("compose.yaml has no %s service", s)
		}
	}
	for name, want := range map[string]string{"migrate": "migrate", "keyrelay": "serve", "worker": "worker"} {
		s := c.Services[name]
		if !slices.Equal(s.Command, []string{want}) {
			t.Errorf("%s: command %v, want [%s]", name, s.Command, want)
		}
		if !s.ReadOnly || !slices.Contains(s.Tmpfs, "/tmp") {
			t.Errorf("%s: want read_only with a tmpfs on /tmp, as in production", name)
		}
		if s.Environment["KEYRELAY_PLUGINS_DIR"] != "/opt/keyrelay/plugins-dev" {
			t.Errorf("%s: KEYRELAY_PLUGINS_DIR=%q, want the image's /opt/keyrelay/plugins-dev", name, s.Environment["KEYRELAY_PLUGINS_DIR"])
		}
		if n, err := strconv.Atoi(s.Environment["KEYRELAY_DB_MAX_CONNS"]); err != nil || n < 1 || n*3 > 90 {
			t.Errorf("%s: KEYRELAY_DB_MAX_CONNS=%q; the three keyrelay containers must fit the postgres image's 100 connections", name, s.Environment["KEYRELAY_DB_MAX_CONNS"])
		}
		if name != "migrate" && s.DependsOn["migrate"].Condition != "service_completed_successfully" {
			t.Errorf("%s: must wait for migrate to complete", name)
		}
	}
	if c.Services["keyrelay"].Environment["KEYRELAY_WORKERS"] != "separate" {
		t.Error("keyrelay (serve): KEYRELAY_WORKERS must be separate, the worker service delivers")
	}
	if hc := strings.Join(c.Services["worker"].Healthcheck.Test, " "); strings.Contains(hc, "/readyz") || hc == "" {
		t.Errorf("worker: healthcheck %q; a worker has no /readyz (only the metrics listener)", hc)
	}
	var providers map[string]struct {
		Provider string            `json:"provider"`
		Settings map[string]string `json:"settings"`
	}
	if err := json.Unmarshal([]byte(c.Services["worker"].Environment["KEYRELAY_DEFAULT_PROVIDERS"]), &providers); err != nil {
		t.Fatalf("worker: KEYRELAY_DEFAULT_PROVIDERS is not JSON: %v", err)
	}
	if e := providers["email"]; e.Provider != "smtp" || e.Settings["host"] != "mailpit" || e.Settings["port"] != "1025" {
		t.Errorf("email goes to %+v, want the smtp provider on mailpit:1025", e)
	}
	if providers["sms"].Provider == "" {
		t.Error("no provider for sms")
	}
}

// TestBundledPlugins builds the image's plugin directories the way its
// build stage does and starts the real plugin host on each: the host
// checks every manifest's checksum and that each binary's Capabilities
// agree with its manifest.
func TestBundledPlugins(t *testing.T) {
	if testing.Short() {
		t.Skip("builds four plugins")
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "run", "./deploy/bundleplugins", "-out", filepath.Join(dir, "plugins"), "-dev", filepath.Join(dir, "plugins-dev"), "-version", "0.0.0-test")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bundleplugins: %v\n%s", err, out)
	}
	for sub, want := range map[string][]string{
		"plugins":     {"httpsms", "smtp", "webhook"},
		"plugins-dev": {"devmailbox", "httpsms", "smtp", "webhook"},
	} {
		t.Run(sub, func(t *testing.T) {
			h, err := host.New(host.Config{Dir: filepath.Join(dir, sub), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatalf("the plugin host refuses %s: %v", sub, err)
			}
			defer h.Close()
			var got []string
			for _, p := range h.Providers() {
				got = append(got, p.Name)
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("providers %v, want %v", got, want)
			}
			ctx := context.Background()
			// A call through the plugin proves the process runs, not only
			// that its manifest parsed.
			if err := h.CheckConfig(ctx, "webhook", map[string]string{}); err == nil {
				t.Error("webhook accepted empty settings")
			}
		})
	}
	if fi, err := os.Lstat(filepath.Join(dir, "plugins-dev", "smtp", "smtp")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("plugins-dev/smtp/smtp should link to the production binary (one copy in the image): %v", err)
	}
}
