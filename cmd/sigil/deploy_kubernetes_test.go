package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/sigil-id/sigil/attestor/node/k8spsat"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/server"
)

// The Kubernetes manifests of deploy/kubernetes are checked here, beside
// the configuration parser and the plugin registry of the binary they
// run (cmd/sigil/internal/config is internal to cmd/sigil).

var k8sDir = filepath.Join("..", "..", "deploy", "kubernetes")

// kustomization is the part of kustomization.yaml the manifests use;
// decoded strictly, so a field this test does not know is an error.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

// k8sObject is one decoded manifest document.
type k8sObject struct {
	where string // file#index
	kind  string
	name  string
	obj   any
}

// newK8sObject returns the typed object for apiVersion and kind; kinds
// the manifests have no business with are refused.
func newK8sObject(apiVersion, kind string) (any, error) {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return &corev1.Namespace{}, nil
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "apps/v1 DaemonSet":
		return &appsv1.DaemonSet{}, nil
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "rbac.authorization.k8s.io/v1 ClusterRole":
		return &rbacv1.ClusterRole{}, nil
	case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}, nil
	case "rbac.authorization.k8s.io/v1 Role":
		return &rbacv1.Role{}, nil
	case "rbac.authorization.k8s.io/v1 RoleBinding":
		return &rbacv1.RoleBinding{}, nil
	}
	return nil, fmt.Errorf("unknown kind %q of apiVersion %q", kind, apiVersion)
}

// decodeK8sManifests strictly decodes every document of src (one file)
// into its typed Kubernetes API object: unknown fields, duplicate fields
// and unknown kinds are errors.
func decodeK8sManifests(file string, src []byte) ([]k8sObject, error) {
	var out []k8sObject
	docs := regexp.MustCompile(`(?m)^---\s*$`).Split(string(src), -1)
	for i, doc := range docs {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(doc, "")) == "" {
			continue
		}
		where := fmt.Sprintf("%s#%d", file, i)
		var tm struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		obj, err := newK8sObject(tm.APIVersion, tm.Kind)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			return nil, fmt.Errorf("%s: %s %s: %w", where, tm.Kind, tm.Metadata.Name, err)
		}
		if tm.Metadata.Name == "" {
			return nil, fmt.Errorf("%s: %s without a name", where, tm.Kind)
		}
		out = append(out, k8sObject{where: where, kind: tm.Kind, name: tm.Metadata.Name, obj: obj})
	}
	return out, nil
}

func TestDecodeK8sManifestsIsStrict(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field":   "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {selectr: {a: b}}\n",
		"duplicate field": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {}\ndata: {}\n",
		"unknown kind":    "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n",
		"wrong type":      "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: a}\nspec: {replicas: three}\n",
		"no name":         "apiVersion: v1\nkind: ServiceAccount\nmetadata: {}\n",
	} {
		if _, err := decodeK8sManifests("x.yaml", []byte(doc)); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	objs, err := decodeK8sManifests("x.yaml", []byte("# c\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n---\n# only a comment\n"))
	if err != nil || len(objs) != 1 || objs[0].name != "a" {
		t.Fatalf("decoded %v, %v", objs, err)
	}
}

// k8sManifests is every object of deploy/kubernetes.
type k8sManifests struct {
	kust kustomization
	objs []k8sObject
}

func loadK8sManifests(t testing.TB, dir string) *k8sManifests {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := &k8sManifests{}
	if err := yaml.UnmarshalStrict(src, &m.kust); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if m.kust.APIVersion != "kustomize.config.k8s.io/v1beta1" || m.kust.Kind != "Kustomization" {
		t.Fatalf("kustomization.yaml: %s %s", m.kust.APIVersion, m.kust.Kind)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk []string
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			onDisk = append(onDisk, b)
		}
	}
	listed := slices.Sorted(slices.Values(m.kust.Resources))
	if !slices.Equal(listed, onDisk) {
		t.Fatalf("kustomization.yaml lists %v; the directory holds %v", listed, onDisk)
	}
	for _, f := range m.kust.Resources {
		src, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		objs, err := decodeK8sManifests(f, src)
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) == 0 {
			t.Fatalf("%s holds no object", f)
		}
		m.objs = append(m.objs, objs...)
	}
	seen := map[string]string{}
	for _, o := range m.objs {
		key := o.kind + "/" + o.name
		if prev, dup := seen[key]; dup {
			t.Fatalf("%s: %s is also defined at %s", o.where, key, prev)
		}
		seen[key] = o.where
	}
	return m
}

// get returns the object of kind and name, or nil.
func get[T any](m *k8sManifests, kind, name string) *T {
	for _, o := range m.objs {
		if o.kind == kind && o.name == name {
			return o.obj.(*T)
		}
	}
	return nil
}

func all[T any](m *k8sManifests) []*T {
	var out []*T
	for _, o := range m.objs {
		if v, ok := o.obj.(*T); ok {
			out = append(out, v)
		}
	}
	return out
}

// selects reports whether a selector of matchLabels only (the manifests
// use no matchExpressions) selects labels; an empty selector selects
// nothing here, since every selector of the manifests must name the app.
func selects(matchLabels map[string]string, expressions int, labels map[string]string) bool {
	if expressions != 0 || len(matchLabels) == 0 {
		return false
	}
	for k, v := range matchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// External objects the operator creates (README.md says how): the
// manifests may reference them and must not define them.
var k8sExternal = map[string][]string{
	"Secret/sigil-join-secret": {"join-secret"},
	"ConfigMap/sigil-bundle":   {"bundle.pem"},
}

// saTokenDir is where Kubernetes mounts the service account token when
// automountServiceAccountToken is not false.
const saTokenDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// podChecks checks the cross-references of one pod template: service
// account, volumes and mounts, ConfigMaps, Secrets and their keys,
// images, and the hardening of every container.
func podChecks(t testing.TB, m *k8sManifests, what string, spec *corev1.PodSpec) {
	t.Helper()
	if spec.ServiceAccountName == "" || get[corev1.ServiceAccount](m, "ServiceAccount", spec.ServiceAccountName) == nil {
		t.Errorf("%s: service account %q is not defined", what, spec.ServiceAccountName)
	}
	if sc := spec.SecurityContext; sc == nil || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: no RuntimeDefault seccomp profile", what)
	}
	volumes := map[string]*corev1.Volume{}
	for i := range spec.Volumes {
		v := &spec.Volumes[i]
		if _, dup := volumes[v.Name]; dup {
			t.Errorf("%s: volume %q defined twice", what, v.Name)
		}
		volumes[v.Name] = v
		if cm := v.ConfigMap; cm != nil {
			checkRefKeys(t, m, what, "ConfigMap", cm.Name, cm.Items)
		}
		if s := v.Secret; s != nil {
			checkRefKeys(t, m, what, "Secret", s.SecretName, s.Items)
		}
	}
	used := map[string]bool{}
	for _, c := range spec.Containers {
		cwhat := what + " container " + c.Name
		if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
			t.Errorf("%s: want exactly one container", what)
		}
		if img := m.kust.Images; c.Image != "sigil" || len(img) != 1 || img[0].Name != c.Image || img[0].NewName == "" || img[0].NewTag == "" {
			t.Errorf("%s: image %q is not the placeholder \"sigil\" that kustomization.yaml's images sets (%+v)", cwhat, c.Image, img)
		}
		sc := c.SecurityContext
		switch {
		case sc == nil:
			t.Errorf("%s: no securityContext", cwhat)
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("%s: allowPrivilegeEscalation is not false", cwhat)
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("%s: readOnlyRootFilesystem is not true", cwhat)
		case sc.Privileged == nil || *sc.Privileged:
			t.Errorf("%s: privileged is not false", cwhat)
		case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0:
			t.Errorf("%s: capabilities are not drop [ALL] with nothing added", cwhat)
		}
		for _, vm := range c.VolumeMounts {
			used[vm.Name] = true // a mount without a volume: checked by the caller (volumeClaimTemplates)
		}
		for _, e := range c.Env {
			if e.ValueFrom == nil {
				continue
			}
			if r := e.ValueFrom.SecretKeyRef; r != nil {
				checkRefKeys(t, m, cwhat+" env "+e.Name, "Secret", r.Name, []corev1.KeyToPath{{Key: r.Key}})
			}
			if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
				checkRefKeys(t, m, cwhat+" env "+e.Name, "ConfigMap", r.Name, []corev1.KeyToPath{{Key: r.Key}})
			}
			if r := e.ValueFrom.FieldRef; r != nil && !slices.Contains([]string{"metadata.name", "metadata.namespace", "spec.nodeName", "status.hostIP", "status.podIP"}, r.FieldPath) {
				t.Errorf("%s: env %s: unexpected fieldRef %q", cwhat, e.Name, r.FieldPath)
			}
		}
	}
	for name := range volumes {
		if !used[name] {
			t.Errorf("%s: volume %q is mounted by no container", what, name)
		}
	}
}

// checkRefKeys checks that the ConfigMap or Secret name is defined in the
// manifests (or is one the operator creates) and holds every key.
func checkRefKeys(t testing.TB, m *k8sManifests, what, kind, name string, items []corev1.KeyToPath) {
	t.Helper()
	var keys []string
	if ext, ok := k8sExternal[kind+"/"+name]; ok {
		keys = ext
	} else if kind == "ConfigMap" {
		cm := get[corev1.ConfigMap](m, "ConfigMap", name)
		if cm == nil {
			t.Errorf("%s: ConfigMap %q is neither defined nor one the operator creates", what, name)
			return
		}
		for k := range cm.Data {
			keys = append(keys, k)
		}
	} else {
		t.Errorf("%s: %s %q is neither defined nor one the operator creates", what, kind, name)
		return
	}
	if len(items) == 0 {
		t.Errorf("%s: %s %q is used without naming its keys", what, kind, name)
	}
	for _, it := range items {
		if !slices.Contains(keys, it.Key) {
			t.Errorf("%s: %s %q has no key %q (it has %v)", what, kind, name, it.Key, keys)
		}
	}
}

// mountFor returns the container's mount that holds the absolute path p
// (the longest mount path that is p or a parent of it), or nil.
func mountFor(c *corev1.Container, p string) *corev1.VolumeMount {
	var best *corev1.VolumeMount
	for i := range c.VolumeMounts {
		vm := &c.VolumeMounts[i]
		if (p == vm.MountPath || strings.HasPrefix(p, vm.MountPath+"/")) && (best == nil || len(vm.MountPath) > len(best.MountPath)) {
			best = vm
		}
	}
	return best
}

func volumeNamed(spec *corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

// fileInVolume checks that the file p is provided by a ConfigMap or
// projected volume mounted over it (or by the service account mount),
// and returns the volume ("" for the service account token).
func fileInVolume(t testing.TB, what string, spec *corev1.PodSpec, c *corev1.Container, p string) *corev1.Volume {
	t.Helper()
	vm := mountFor(c, p)
	if vm == nil {
		if strings.HasPrefix(p, saTokenDir+"/") && (spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken) {
			if f := path.Base(p); f != "token" && f != "ca.crt" && f != "namespace" {
				t.Errorf("%s: %s is not a file of the service account mount", what, p)
			}
			return nil
		}
		t.Errorf("%s: %s is on no volume mount", what, p)
		return nil
	}
	v := volumeNamed(spec, vm.Name)
	if v == nil {
		t.Errorf("%s: %s: mount %q has no volume", what, p, vm.Name)
		return nil
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(p, vm.MountPath), "/")
	var files []string
	switch {
	case v.ConfigMap != nil:
		for _, it := range v.ConfigMap.Items {
			files = append(files, it.Path)
		}
	case v.Projected != nil:
		for _, s := range v.Projected.Sources {
			if s.ServiceAccountToken != nil {
				files = append(files, s.ServiceAccountToken.Path)
			}
		}
	default:
		t.Errorf("%s: %s is on volume %q, which is not a ConfigMap or projected volume", what, p, v.Name)
		return v
	}
	if !slices.Contains(files, rel) {
		t.Errorf("%s: volume %q mounted at %s has no file %q (it has %v)", what, v.Name, vm.MountPath, rel, files)
	}
	return v
}

func containerPort(c *corev1.Container, name string) int32 {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

func portOf(t testing.TB, what, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Errorf("%s: %q: %v", what, addr, err)
		return 0
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Errorf("%s: %q: %v", what, addr, err)
	}
	return int32(n)
}

// serviceSelecting returns the Services whose selector selects labels.
func servicesSelecting(m *k8sManifests, labels map[string]string) []*corev1.Service {
	var out []*corev1.Service
	for _, s := range all[corev1.Service](m) {
		if selects(s.Spec.Selector, 0, labels) {
			out = append(out, s)
		}
	}
	return out
}

// rbacRules returns the rules granted to the service account name of
// the kustomization's namespace through every binding, each as
// "apiGroup resource verb [namespace]".
func rbacRules(t testing.TB, m *k8sManifests, ns, sa string) []string {
	t.Helper()
	var out []string
	subjectIs := func(subjects []rbacv1.Subject) bool {
		for _, s := range subjects {
			if s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == ns {
				return true
			}
		}
		return false
	}
	add := func(rules []rbacv1.PolicyRule, scope string) {
		for _, r := range rules {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						out = append(out, strings.TrimSpace(fmt.Sprintf("%s %s %s %s", g, res, v, scope)))
					}
				}
			}
		}
	}
	for _, b := range all[rbacv1.ClusterRoleBinding](m) {
		if !subjectIs(b.Subjects) {
			continue
		}
		cr := get[rbacv1.ClusterRole](m, "ClusterRole", b.RoleRef.Name)
		if b.RoleRef.Kind != "ClusterRole" || b.RoleRef.APIGroup != rbacv1.GroupName || cr == nil {
			t.Errorf("ClusterRoleBinding %s: roleRef %+v is not a ClusterRole of the manifests", b.Name, b.RoleRef)
			continue
		}
		add(cr.Rules, "")
	}
	for _, b := range all[rbacv1.RoleBinding](m) {
		if !subjectIs(b.Subjects) {
			continue
		}
		r := get[rbacv1.Role](m, "Role", b.RoleRef.Name)
		if b.RoleRef.Kind != "Role" || b.RoleRef.APIGroup != rbacv1.GroupName || r == nil {
			t.Errorf("RoleBinding %s: roleRef %+v is not a Role of the manifests", b.Name, b.RoleRef)
			continue
		}
		add(r.Rules, "ns:"+ns)
	}
	slices.Sort(out)
	return out
}

// hclAttrs returns the literal attributes of a plugin block's body and
// of its nested blocks ("cluster.kubernetes.kube_api.url"), as strings
// (lists joined with ",").
func hclAttrs(t testing.TB, body hcl.Body) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(prefix string, b *hclsyntax.Body)
	walk = func(prefix string, b *hclsyntax.Body) {
		for name, a := range b.Attributes {
			v, diags := a.Expr.Value(nil)
			if diags.HasErrors() {
				t.Errorf("%s%s: %v", prefix, name, diags)
				continue
			}
			if v.Type().IsTupleType() || v.Type().IsListType() {
				var parts []string
				for _, e := range v.AsValueSlice() {
					parts = append(parts, e.AsString())
				}
				out[prefix+name] = strings.Join(parts, ",")
				continue
			}
			if v.Type().FriendlyName() == "string" {
				out[prefix+name] = v.AsString()
			} else {
				out[prefix+name] = v.GoString()
			}
		}
		for _, nb := range b.Blocks {
			p := prefix + nb.Type + "."
			for _, l := range nb.Labels {
				p += l + "."
			}
			out[strings.TrimSuffix(p, ".")] = "block"
			walk(p, nb.Body)
		}
	}
	sb, ok := body.(*hclsyntax.Body)
	if !ok {
		t.Fatalf("plugin block body is %T", body)
	}
	walk("", sb)
	return out
}

func pluginBlock(t testing.TB, blocks []plugin.Block, kind plugin.Kind, name string) map[string]string {
	t.Helper()
	for _, b := range blocks {
		if b.Kind == kind && b.Name == name {
			return hclAttrs(t, b.Body)
		}
	}
	t.Fatalf("no %s %q block", kind, name)
	return nil
}

// rootPaths rewrites every absolute path in the string literals of an
// HCL file to one under root, so that plugins that read or create files
// when they are built (the disk key manager, the CA files of k8s_psat)
// are built for real in the test.
func rootPaths(src, root string) string {
	return strings.ReplaceAll(src, `"/`, `"`+root+`/`)
}

// writeTestCA writes a self-signed CA certificate in PEM at p.
func writeTestCA(t testing.TB, p string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func writeTestFile(t testing.TB, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// expandArgs substitutes $(VAR) in container arguments as the kubelet
// does, from the env values given.
func expandArgs(args []string, env map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`).ReplaceAllStringFunc(a, func(s string) string {
			if v, ok := env[s[2:len(s)-1]]; ok {
				return v
			}
			return s
		})
	}
	return out
}

// parseDaemonArgs parses a container's arguments ("server" or "agent"
// followed by flags) with the daemon's real flags; apply copies them
// over the settings of the -config file, which it returns the path of.
func parseDaemonArgs(t testing.TB, args []string, daemon string, register func(*pflag.FlagSet)) string {
	t.Helper()
	if len(args) == 0 || args[0] != daemon {
		t.Fatalf("container args %q do not start with %q", args, daemon)
	}
	fs := pflag.NewFlagSet(daemon, pflag.ContinueOnError)
	cfgPath := fs.String("config", "", "")
	register(fs)
	var norm []string
	for _, a := range args[1:] {
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			a = "-" + a // single-dash long flags, as cli.NormalizeArgs
		}
		norm = append(norm, a)
	}
	if err := fs.Parse(norm); err != nil {
		t.Fatalf("%s args %q: %v", daemon, args, err)
	}
	if fs.NArg() != 0 {
		t.Fatalf("%s args %q: stray arguments %q", daemon, args, fs.Args())
	}
	return *cfgPath
}

// configFromMount returns the HCL file the container reads at p, from
// the ConfigMap mounted there.
func configFromMount(t testing.TB, m *k8sManifests, spec *corev1.PodSpec, c *corev1.Container, p string) string {
	t.Helper()
	v := fileInVolume(t, c.Name+" -config", spec, c, p)
	if v == nil || v.ConfigMap == nil {
		t.Fatalf("%s: -config %s is not from a ConfigMap", c.Name, p)
	}
	cm := get[corev1.ConfigMap](m, "ConfigMap", v.ConfigMap.Name)
	if cm == nil {
		t.Fatalf("%s: ConfigMap %q missing", c.Name, v.ConfigMap.Name)
	}
	rel := strings.TrimPrefix(p, mountFor(c, p).MountPath+"/")
	for _, it := range v.ConfigMap.Items {
		if it.Path == rel {
			return cm.Data[it.Key]
		}
	}
	t.Fatalf("%s: no item at %s", c.Name, p)
	return ""
}

func TestKubernetesManifests(t *testing.T) {
	checkKubernetesManifests(t, k8sDir)
}

// checkKubernetesManifests checks the manifests in dir.
func checkKubernetesManifests(t testing.TB, dir string) {
	m := loadK8sManifests(t, dir)
	ns := m.kust.Namespace
	if ns == "" || get[corev1.Namespace](m, "Namespace", ns) == nil {
		t.Fatalf("kustomization namespace %q is not defined by a Namespace object", ns)
	}
	for _, o := range m.objs {
		// kustomize sets the namespace; one written in a file would be
		// overridden silently.
		if meta, ok := o.obj.(interface{ GetNamespace() string }); !ok || meta.GetNamespace() != "" {
			t.Errorf("%s: %s %s sets metadata.namespace; leave it to kustomization.yaml", o.where, o.kind, o.name)
		}
	}

	// ---- server ------------------------------------------------------
	ss := get[appsv1.StatefulSet](m, "StatefulSet", "sigil-server")
	if ss == nil {
		t.Fatal("no StatefulSet sigil-server")
	}
	if ss.Spec.Replicas == nil || *ss.Spec.Replicas != 3 {
		t.Errorf("StatefulSet replicas = %v, want 3", ss.Spec.Replicas)
	}
	if ss.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("StatefulSet podManagementPolicy = %q, want Parallel (a lone sigil-server-0 has no quorum after all servers went down)", ss.Spec.PodManagementPolicy)
	}
	sLabels := ss.Spec.Template.Labels
	if sel := ss.Spec.Selector; sel == nil || !selects(sel.MatchLabels, len(sel.MatchExpressions), sLabels) {
		t.Errorf("StatefulSet selector %v does not select its template's labels %v", ss.Spec.Selector, sLabels)
	}
	sSpec := &ss.Spec.Template.Spec
	podChecks(t, m, "StatefulSet sigil-server", sSpec)
	sc := &sSpec.Containers[0]
	claims := map[string]bool{}
	for _, vc := range ss.Spec.VolumeClaimTemplates {
		claims[vc.Name] = true
		if q, ok := vc.Spec.Resources.Requests[corev1.ResourceStorage]; !ok || q.IsZero() {
			t.Errorf("volumeClaimTemplate %s requests no storage", vc.Name)
		}
	}
	for _, vm := range sc.VolumeMounts {
		if volumeNamed(sSpec, vm.Name) == nil && !claims[vm.Name] {
			t.Errorf("server mount %q is neither a volume nor a volumeClaimTemplate", vm.Name)
		}
	}
	for name := range claims {
		if !slices.ContainsFunc(sc.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.Name == name }) {
			t.Errorf("volumeClaimTemplate %s is not mounted", name)
		}
	}

	// The headless peers Service of serviceName, and the node API Service.
	peers := get[corev1.Service](m, "Service", ss.Spec.ServiceName)
	if peers == nil {
		t.Fatalf("StatefulSet serviceName %q is not a Service of the manifests", ss.Spec.ServiceName)
	}
	if peers.Spec.ClusterIP != corev1.ClusterIPNone || !peers.Spec.PublishNotReadyAddresses {
		t.Errorf("Service %s: want clusterIP None and publishNotReadyAddresses (peers elect a leader before they are ready)", peers.Name)
	}
	for _, s := range all[corev1.Service](m) {
		var target *corev1.PodTemplateSpec
		if selects(s.Spec.Selector, 0, sLabels) {
			target = &ss.Spec.Template
		}
		if target == nil {
			t.Errorf("Service %s: selector %v selects no pod of the manifests", s.Name, s.Spec.Selector)
			continue
		}
		for _, p := range s.Spec.Ports {
			if p.TargetPort.StrVal == "" || containerPort(&target.Spec.Containers[0], p.TargetPort.StrVal) == 0 {
				t.Errorf("Service %s port %s: targetPort %v is not a named port of the container", s.Name, p.Name, p.TargetPort.String())
			} else if containerPort(&target.Spec.Containers[0], p.TargetPort.StrVal) != p.Port {
				t.Errorf("Service %s port %s: port %d differs from the container port %d", s.Name, p.Name, p.Port, containerPort(&target.Spec.Containers[0], p.TargetPort.StrVal))
			}
		}
	}

	// The PodDisruptionBudget.
	pdbs := all[policyv1.PodDisruptionBudget](m)
	if len(pdbs) != 1 {
		t.Fatalf("%d PodDisruptionBudgets, want 1", len(pdbs))
	}
	pdb := pdbs[0]
	if sel := pdb.Spec.Selector; sel == nil || !selects(sel.MatchLabels, len(sel.MatchExpressions), sLabels) {
		t.Errorf("PodDisruptionBudget selector does not select the server pods")
	}
	if mu := pdb.Spec.MaxUnavailable; mu == nil || mu.IntValue() != 1 || pdb.Spec.MinAvailable != nil {
		t.Errorf("PodDisruptionBudget: want maxUnavailable 1 and no minAvailable")
	}

	// The server's configuration, as each pod sees it.
	env := map[string]string{}
	for _, e := range sc.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name" {
			env[e.Name] = "" // set per pod below
		}
	}
	secretEnv := slices.ContainsFunc(sc.Env, func(e corev1.EnvVar) bool {
		return e.Name == config.EnvJoinSecret && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil
	})
	if !secretEnv {
		t.Errorf("server: %s does not come from a Secret", config.EnvJoinSecret)
	}
	secret, err := server.GenerateJoinSecret(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(config.EnvJoinSecret, secret)
	root := t.TempDir()
	writeTestCA(t, filepath.Join(root, saTokenDir, "ca.crt"))
	writeTestFile(t, filepath.Join(root, saTokenDir, "token"), []byte("token"))
	var serverBlocks []plugin.Block
	var serverTD string
	var clusterPort int32
	joined := 0
	for i := range int(*ss.Spec.Replicas) {
		pod := fmt.Sprintf("%s-%d", ss.Name, i)
		for k := range env {
			env[k] = pod
		}
		var flags *config.ServerFlags
		args := expandArgs(sc.Args, env)
		cfgPath := parseDaemonArgs(t, args, "server", func(fs *pflag.FlagSet) { flags = config.NewServerFlags(fs) })
		hclSrc := configFromMount(t, m, sSpec, sc, cfgPath)
		f, err := config.Parse(cfgPath, []byte(hclSrc))
		if err != nil {
			t.Fatalf("server.hcl: %v", err)
		}
		if f.Server == nil || f.Agent != nil {
			t.Fatal("server.hcl: want one server block")
		}
		s := f.Server
		flags.Apply(s)
		if err := s.Validate(); err != nil {
			t.Fatalf("server.hcl: %v", err)
		}
		if s.NodeName != pod {
			t.Errorf("%s: node name %q", pod, s.NodeName)
		}
		// Paths: the data directory is the pod's own volume, and the admin
		// socket is on a volume too (the root file system is read-only).
		if vm := mountFor(sc, s.DataDir); vm == nil || vm.MountPath != s.DataDir || !claims[vm.Name] {
			t.Errorf("server data_dir %s is not the mount of a volumeClaimTemplate", s.DataDir)
		}
		if vm := mountFor(sc, s.AdminSocket); vm == nil || !claims[vm.Name] {
			t.Errorf("server admin_socket %s is not on the pod's volume", s.AdminSocket)
		}
		// Ports: the files' listen addresses are the container's ports,
		// which the Services and probes name.
		for _, p := range []struct{ key, addr, port string }{
			{"bind_address", s.BindAddress, "node-api"},
			{"cluster_address", s.ClusterAddress, "cluster"},
			{"health_address", s.HealthAddress, "health"},
		} {
			if got, want := portOf(t, "server "+p.key, p.addr), containerPort(sc, p.port); got == 0 || got != want {
				t.Errorf("server %s %q: the container port %q is %d", p.key, p.addr, p.port, want)
			}
		}
		clusterPort = containerPort(sc, "cluster")
		for _, pr := range []*corev1.Probe{sc.ReadinessProbe, sc.LivenessProbe} {
			if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Port.StrVal != "health" {
				t.Errorf("server: probes must GET the health port")
			}
		}
		if sc.ReadinessProbe != nil && sc.ReadinessProbe.HTTPGet != nil && sc.ReadinessProbe.HTTPGet.Path != "/ready" {
			t.Errorf("server readiness probe path %q", sc.ReadinessProbe.HTTPGet.Path)
		}
		// Each pod advertises its own name in the headless Service.
		if want := fmt.Sprintf("%s.%s:%d", pod, peers.Name, clusterPort); s.AdvertiseAddress != want {
			t.Errorf("%s advertises %q, want %q", pod, s.AdvertiseAddress, want)
		}
		// Built for real: the plugins (with their settings) and the
		// server configuration, with each pod's paths under root.
		rooted, err := config.Parse(cfgPath, []byte(rootPaths(hclSrc, root)))
		if err != nil {
			t.Fatal(err)
		}
		rs := rooted.Server
		flags.Apply(rs)
		cfg, err := serverConfig(rs, zap.NewNop())
		if err != nil {
			t.Fatalf("%s: building the server: %v", pod, err)
		}
		if len(cfg.NodeVerifiers) != 1 || cfg.NodeVerifiers[0].Name() != k8spsat.Name || cfg.KeyStore == nil {
			t.Errorf("%s: plugins built: %d node verifiers, key store %v", pod, len(cfg.NodeVerifiers), cfg.KeyStore)
		}
		// The first pod finds only itself in retry_join and bootstraps;
		// the others join through it.
		if i == 0 && len(cfg.JoinAddresses) != 0 {
			t.Errorf("%s would join %v instead of bootstrapping", pod, cfg.JoinAddresses)
		}
		if i > 0 {
			if len(cfg.JoinAddresses) == 0 {
				t.Errorf("%s would bootstrap a second cluster", pod)
			}
			for _, a := range cfg.JoinAddresses {
				host, port, _ := net.SplitHostPort(a)
				ord, ok := strings.CutPrefix(host, ss.Name+"-")
				n, err := strconv.Atoi(strings.TrimSuffix(ord, "."+peers.Name))
				if !ok || !strings.HasSuffix(host, "."+peers.Name) || err != nil || n < 0 || n >= int(*ss.Spec.Replicas) || port != strconv.Itoa(int(clusterPort)) {
					t.Errorf("%s: join address %q is not a server pod's cluster port in %s", pod, a, peers.Name)
				}
			}
			joined++
		}
		if cfg.NoBootstrap {
			t.Errorf("%s: bootstrap = false: nobody would bootstrap", pod)
		}
		serverBlocks = s.Plugins.Blocks
		serverTD = s.TrustDomain
	}
	if joined != int(*ss.Spec.Replicas)-1 {
		t.Errorf("%d servers join, want %d", joined, *ss.Spec.Replicas-1)
	}
	psat := pluginBlock(t, serverBlocks, plugin.KindNodeAttestor, k8spsat.Name)
	var psatCluster string
	for k, v := range psat {
		if c, ok := strings.CutPrefix(k, "cluster."); ok && v == "block" && !strings.Contains(c, ".") {
			if psatCluster != "" {
				t.Errorf("k8s_psat: more than one cluster block")
			}
			psatCluster = c
		}
	}
	pc := "cluster." + psatCluster + "."
	for _, key := range []string{"kube_api.ca_path", "kube_api.token_path"} {
		if p := psat[pc+key]; p != "" {
			fileInVolume(t, "server k8s_psat "+key, sSpec, sc, p)
		}
	}
	if psat[pc+"kube_api.url"] != "" && rbacRules(t, m, ns, sSpec.ServiceAccountName) == nil {
		t.Errorf("server: TokenReview with no RBAC")
	}

	// ---- agent -------------------------------------------------------
	ds := get[appsv1.DaemonSet](m, "DaemonSet", "sigil-agent")
	if ds == nil {
		t.Fatal("no DaemonSet sigil-agent")
	}
	aLabels := ds.Spec.Template.Labels
	if sel := ds.Spec.Selector; sel == nil || !selects(sel.MatchLabels, len(sel.MatchExpressions), aLabels) {
		t.Errorf("DaemonSet selector %v does not select its template's labels %v", ds.Spec.Selector, aLabels)
	}
	if selects(ss.Spec.Selector.MatchLabels, 0, aLabels) || selects(ds.Spec.Selector.MatchLabels, 0, sLabels) {
		t.Errorf("the server and agent selectors overlap")
	}
	aSpec := &ds.Spec.Template.Spec
	podChecks(t, m, "DaemonSet sigil-agent", aSpec)
	ac := &aSpec.Containers[0]
	for _, vm := range ac.VolumeMounts {
		if volumeNamed(aSpec, vm.Name) == nil {
			t.Errorf("agent mount %q has no volume", vm.Name)
		}
	}
	if !aSpec.HostPID {
		t.Errorf("agent: hostPID is needed to attest workloads (their pids are the node's)")
	}
	if aSpec.HostNetwork && aSpec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("agent: hostNetwork needs dnsPolicy ClusterFirstWithHostNet to resolve the server Service")
	}
	var agentFlags *config.AgentFlags
	cfgPath := parseDaemonArgs(t, ac.Args, "agent", func(fs *pflag.FlagSet) { agentFlags = config.NewAgentFlags(fs) })
	hclSrc := configFromMount(t, m, aSpec, ac, cfgPath)
	f, err := config.Parse(cfgPath, []byte(hclSrc))
	if err != nil {
		t.Fatalf("agent.hcl: %v", err)
	}
	if f.Agent == nil || f.Server != nil {
		t.Fatal("agent.hcl: want one agent block")
	}
	a := f.Agent
	agentFlags.Apply(a)
	if err := a.Validate(); err != nil {
		t.Fatalf("agent.hcl: %v", err)
	}
	if a.TrustDomain != serverTD {
		t.Errorf("agent trust_domain %q; the servers' is %q", a.TrustDomain, serverTD)
	}
	// The agent reaches the node API Service, which selects the servers
	// on the port that bind_address listens on.
	host, port, err := net.SplitHostPort(a.ServerAddress)
	if err != nil {
		t.Fatalf("agent server_address %q: %v", a.ServerAddress, err)
	}
	api := get[corev1.Service](m, "Service", strings.TrimSuffix(strings.TrimSuffix(host, ".svc"), "."+ns))
	if api == nil || api.Name == peers.Name {
		t.Fatalf("agent server_address %q does not name the node API Service", a.ServerAddress)
	}
	if !slices.ContainsFunc(api.Spec.Ports, func(p corev1.ServicePort) bool {
		return strconv.Itoa(int(p.Port)) == port && p.TargetPort.StrVal == "node-api"
	}) {
		t.Errorf("agent server_address %q: Service %s has no port %s to the node API", a.ServerAddress, api.Name, port)
	}
	if !slices.Contains(servicesSelecting(m, sLabels), api) {
		t.Errorf("Service %s does not select the servers", api.Name)
	}
	// Files and directories.
	if v := fileInVolume(t, "agent trust_bundle_path", aSpec, ac, a.TrustBundlePath); v == nil || v.ConfigMap == nil {
		t.Errorf("agent trust_bundle_path %s is not from a ConfigMap", a.TrustBundlePath)
	}
	hostDir := func(what, p string, exact bool) {
		vm := mountFor(ac, p)
		if vm == nil || (exact && vm.MountPath != p) {
			t.Errorf("agent %s %s is not a mount", what, p)
			return
		}
		v := volumeNamed(aSpec, vm.Name)
		if v == nil || v.HostPath == nil || v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectoryOrCreate {
			t.Errorf("agent %s %s: volume %q is not a hostPath directory", what, p, vm.Name)
		}
	}
	hostDir("data_dir", a.DataDir, true)
	socket := a.SocketPath
	hostDir("socket_path", socket, false)
	if vm := mountFor(ac, socket); vm != nil && filepath.Dir(filepath.Dir(socket)) != vm.MountPath {
		// The private admin socket goes beside public/: the mount must
		// hold both.
		t.Errorf("agent socket_path %s: mount %s should be the parent of its directory", socket, vm.MountPath)
	}
	for _, pr := range []*corev1.Probe{ac.ReadinessProbe, ac.LivenessProbe} {
		if pr == nil || pr.Exec == nil || len(pr.Exec.Command) != 4 || pr.Exec.Command[0] != "sigil" || pr.Exec.Command[1] != "healthcheck" ||
			!strings.HasPrefix(pr.Exec.Command[3], "http://"+a.HealthAddress+"/") {
			t.Errorf("agent probe %+v does not check health_address %s", pr, a.HealthAddress)
		}
	}
	// Built for real.
	writeTestCA(t, filepath.Join(root, a.TrustBundlePath))
	rooted, err := config.Parse(cfgPath, []byte(rootPaths(hclSrc, root)))
	if err != nil {
		t.Fatal(err)
	}
	agentFlags.Apply(rooted.Agent)
	acfg, err := agentConfig(rooted.Agent, zap.NewNop())
	if err != nil {
		t.Fatalf("building the agent: %v", err)
	}
	var wnames []string
	for _, w := range acfg.WorkloadAttestors {
		wnames = append(wnames, w.Name())
	}
	if acfg.NodeAttestor == nil || acfg.NodeAttestor.Name() != k8spsat.Name || !slices.Contains(wnames, "k8s") {
		t.Errorf("agent plugins: node attestor %v, workload attestors %v", acfg.NodeAttestor, wnames)
	}

	// k8s_psat on both sides: the agent's projected token, for the audience
	// and cluster the servers expect, from a service account they allow.
	apsat := pluginBlock(t, a.Plugins.Blocks, plugin.KindNodeAttestor, k8spsat.Name)
	if apsat["cluster"] != psatCluster {
		t.Errorf("agent k8s_psat cluster %q; the servers know %q", apsat["cluster"], psatCluster)
	}
	tokenPath := apsat["token_path"]
	if tokenPath == "" {
		tokenPath = k8spsat.DefaultTokenPath
	}
	tv := fileInVolume(t, "agent k8s_psat token_path", aSpec, ac, tokenPath)
	if tv == nil || tv.Projected == nil {
		t.Fatalf("agent k8s_psat token %s is not a projected volume", tokenPath)
	}
	for _, src := range tv.Projected.Sources {
		if s := src.ServiceAccountToken; s != nil && s.Path == path.Base(tokenPath) {
			if s.Audience != psat[pc+"audience"] || s.Audience == "" {
				t.Errorf("agent token audience %q; the servers expect %q", s.Audience, psat[pc+"audience"])
			}
			if s.ExpirationSeconds == nil || *s.ExpirationSeconds < 600 {
				t.Errorf("agent token expirationSeconds must be at least 600")
			}
		}
	}
	if want := ns + ":" + aSpec.ServiceAccountName; !slices.Contains(strings.Split(psat[pc+"service_account_allow_list"], ","), want) {
		t.Errorf("server k8s_psat service_account_allow_list %q does not allow the agents (%s)", psat[pc+"service_account_allow_list"], want)
	}
	if psat[pc+"validation"] == k8spsat.ValidationTokenReview {
		if aSpec.AutomountServiceAccountToken != nil && !*aSpec.AutomountServiceAccountToken {
			t.Errorf("agent: the k8s workload attestor needs the service account token")
		}
	}

	// ---- RBAC --------------------------------------------------------
	for _, o := range m.objs {
		var rules []rbacv1.PolicyRule
		switch r := o.obj.(type) {
		case *rbacv1.ClusterRole:
			rules = r.Rules
		case *rbacv1.Role:
			rules = r.Rules
		case *rbacv1.ClusterRoleBinding:
			for _, s := range r.Subjects {
				if s.Kind != "ServiceAccount" || get[corev1.ServiceAccount](m, "ServiceAccount", s.Name) == nil || s.Namespace != ns {
					t.Errorf("%s: subject %+v is not a service account of the manifests in %s", o.where, s, ns)
				}
			}
		case *rbacv1.RoleBinding:
			for _, s := range r.Subjects {
				if s.Kind != "ServiceAccount" || get[corev1.ServiceAccount](m, "ServiceAccount", s.Name) == nil || s.Namespace != ns {
					t.Errorf("%s: subject %+v is not a service account of the manifests in %s", o.where, s, ns)
				}
			}
		}
		for _, r := range rules {
			for _, s := range slices.Concat(r.APIGroups, r.Resources, r.Verbs) {
				if s == "*" {
					t.Errorf("%s: %s %s grants a wildcard", o.where, o.kind, o.name)
				}
			}
			if len(r.ResourceNames) == 0 && slices.ContainsFunc(r.Verbs, func(v string) bool { return v != "get" && v != "create" }) {
				t.Errorf("%s: %s %s grants verbs %v; Sigil only gets and creates", o.where, o.kind, o.name, r.Verbs)
			}
		}
	}
	// Exactly what attestor/node/k8spsat (TokenReview; the agent's pod for
	// tokens without a node claim, in the agents' namespace) and
	// attestor/workload/k8s (the kubelet's /pods) call.
	if got, want := rbacRules(t, m, ns, sSpec.ServiceAccountName), []string{"authentication.k8s.io tokenreviews create", "pods get ns:" + ns}; !slices.Equal(got, want) {
		t.Errorf("server RBAC = %q, want %q", got, want)
	}
	if got, want := rbacRules(t, m, ns, aSpec.ServiceAccountName), []string{"nodes/pods get"}; !slices.Equal(got, want) {
		t.Errorf("agent RBAC = %q, want %q", got, want)
	}

	// ---- README ------------------------------------------------------
	readme, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for ext := range k8sExternal {
		name := strings.SplitN(ext, "/", 2)[1]
		if !bytes.Contains(readme, []byte(name)) {
			t.Errorf("README.md does not say how to create %s", ext)
		}
	}
}

// recordTB records the failures of a check instead of failing the test;
// Fatal ends the check's goroutine.
type recordTB struct {
	testing.TB
	errs []string
}

func (r *recordTB) Helper() {}

func (r *recordTB) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recordTB) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	runtime.Goexit()
}

func (r *recordTB) Fatal(args ...any) {
	r.errs = append(r.errs, fmt.Sprint(args...))
	runtime.Goexit()
}

// TestKubernetesManifestsMutations: each broken cross-reference, made in
// a copy of the manifests, is reported with the message expected.
func TestKubernetesManifestsMutations(t *testing.T) {
	for _, tc := range []struct {
		name, file, old, new, want string
	}{
		{"unknown field", "server-pdb.yaml", "maxUnavailable: 1", "maxUnavailable: 1\n  maxUnavailabel: 1", "unknown field"},
		{"serviceName", "server-statefulset.yaml", "serviceName: sigil-server-peers", "serviceName: sigil-peers", "is not a Service of the manifests"},
		{"service account", "agent-daemonset.yaml", "serviceAccountName: sigil-agent", "serviceAccountName: sigil-agnt", `service account "sigil-agnt" is not defined`},
		{"volume name", "agent-daemonset.yaml", "- name: bundle\n              mountPath", "- name: bundl\n              mountPath", `mount "bundl" has no volume`},
		{"configmap key", "server-statefulset.yaml", "- key: server.hcl", "- key: sever.hcl", `has no key "sever.hcl"`},
		{"secret name", "server-statefulset.yaml", "name: sigil-join-secret", "name: sigil-join", `Secret "sigil-join" is neither defined`},
		{"service selector", "server-service.yaml", "  selector:\n    app.kubernetes.io/name: sigil-server\n  ports:\n    - name: node-api", "  selector:\n    app.kubernetes.io/name: sigil-servr\n  ports:\n    - name: node-api", "selects no pod"},
		{"pdb selector", "server-pdb.yaml", "app.kubernetes.io/name: sigil-server\n", "app.kubernetes.io/name: sigil-agent\n", "PodDisruptionBudget selector does not select the server pods"},
		{"target port", "server-service.yaml", "targetPort: cluster", "targetPort: clustr", "is not a named port"},
		{"agent server address", "agent-config.yaml", `"sigil-server:8081"`, `"sigil-server:8082"`, "has no port 8082"},
		{"bind address", "server-config.yaml", `bind_address   = ":8081"`, `bind_address   = ":9081"`, "the container port \"node-api\" is 8081"},
		{"trust domain", "agent-config.yaml", `trust_domain = "example.org"`, `trust_domain = "example.com"`, "the servers' is"},
		{"audience", "agent-daemonset.yaml", "audience: sigil-server", "audience: sigil", `agent token audience "sigil"`},
		{"allow list", "server-config.yaml", `["sigil:sigil-agent"]`, `["default:sigil-agent"]`, "does not allow the agents"},
		{"hcl key", "server-config.yaml", "log_level  = \"info\"", "log_levl = \"info\"", "Unsupported argument"},
		{"plugin setting", "agent-config.yaml", "skip_kubelet_verify = true", "skip_kubelet_verify = \"maybe\"", "building the agent"},
		{"unknown plugin", "server-config.yaml", `key_manager "disk" {}`, `key_manager "dsk" {}`, "building the server"},
		{"retry_join", "server-config.yaml", `sigil-server-0.sigil-server-peers:8444`, `sigil-server-1.sigil-server-peers:8444`, "would join"},
		{"rbac verb", "agent-rbac.yaml", `verbs: ["get"]`, `verbs: ["get", "list"]`, "agent RBAC"},
		{"rbac subject", "server-rbac.yaml", "name: sigil-server\n    namespace: sigil\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n", "name: sigil-server\n    namespace: default\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n", "is not a service account of the manifests"},
		{"capabilities", "agent-daemonset.yaml", `drop: ["ALL"]`, "drop: [\"ALL\"]\n              add: [\"SYS_PTRACE\"]", "capabilities are not drop [ALL]"},
		{"image", "server-statefulset.yaml", "image: sigil", "image: sigil:latest", "is not the placeholder"},
		{"unlisted file", "kustomization.yaml", "  - server-pdb.yaml\n", "", "kustomization.yaml lists"},
		{"readme", "README.md", "sigil-bundle", "the bundle", "does not say how to create ConfigMap/sigil-bundle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			files, err := os.ReadDir(k8sDir)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, f := range files {
				src, err := os.ReadFile(filepath.Join(k8sDir, f.Name()))
				if err != nil {
					t.Fatal(err)
				}
				if f.Name() == tc.file {
					if !strings.Contains(string(src), tc.old) {
						t.Fatalf("%s does not contain %q", tc.file, tc.old)
					}
					src = []byte(strings.ReplaceAll(string(src), tc.old, tc.new))
					found = true
				}
				writeTestFile(t, filepath.Join(dir, f.Name()), src)
			}
			if !found {
				t.Fatalf("no file %s", tc.file)
			}
			r := &recordTB{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				checkKubernetesManifests(r, dir)
			}()
			<-done
			if !slices.ContainsFunc(r.errs, func(e string) bool { return strings.Contains(e, tc.want) }) {
				t.Errorf("no failure containing %q; failures: %q", tc.want, r.errs)
			}
		})
	}
}
