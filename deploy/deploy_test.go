// Package deploy_test checks the deployment files (the Dockerfile,
// deploy/compose.yaml, deploy/k8s) against the code they deploy, so that
// they cannot drift silently: the image every file names is the one
// scripts/graflow-image.sh builds, the graflow commands and flags they pass
// exist, a worker's grace period covers its drain, and every process runs
// as a non-root user. No cluster is needed (none is available in CI): the
// manifests are parsed, not applied. scripts/compose-test.sh (make
// compose-test) runs the compose stack itself.
package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow/worker"
	"gopkg.in/yaml.v3"
)

// root is the repository's root, seen from this package's directory.
const root = ".."

// workerStopAfterDrain is how long worker.Worker.Run may still take after
// its drain timeout on SIGTERM (worker/worker.go): the batcher's deadline
// ends 15 s after the drain timeout (handlers get 10 s of it to honour
// their cancelled context), then deregistering takes up to 5 s. A grace
// period (Kubernetes' terminationGracePeriodSeconds, compose's
// stop_grace_period) must exceed drain timeout + this.
const workerStopAfterDrain = 20 * time.Second

// builtImage is the image scripts/graflow-image.sh builds by default.
func builtImage(t *testing.T) string {
	t.Helper()
	script := readFile(t, "scripts/graflow-image.sh")
	m := regexp.MustCompile(`(?m)^IMAGE="\$\{GRAFLOW_IMAGE:-([^}]+)\}"$`).FindStringSubmatch(script)
	if m == nil {
		t.Fatal(`scripts/graflow-image.sh: no line IMAGE="${GRAFLOW_IMAGE:-...}"`)
	}
	return m[1]
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	stages := dockerStages(t, readFile(t, "Dockerfile"))
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stage(s), want a build stage and a final one", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	t.Run("the build stage starts from the local Go builder and builds a static binary", func(t *testing.T) {
		t.Parallel()
		if !strings.Contains(build.from, "GO_BUILDER") {
			t.Errorf("build stage FROM %q, want FROM ${GO_BUILDER} (scripts/graflow-image.sh passes graflow/go-builder)", build.from)
		}
		if !slices.ContainsFunc(build.lines, func(l string) bool { return strings.Contains(l, "CGO_ENABLED=0") }) {
			t.Error("build stage does not set CGO_ENABLED=0: the binary would need a libc the final image lacks")
		}
	})
	t.Run("the final stage is scratch, runs as a numeric non-root user, enters /graflow", func(t *testing.T) {
		t.Parallel()
		if final.from != "scratch" {
			t.Errorf("final stage FROM %q, want scratch", final.from)
		}
		user := final.last("USER")
		uid, _, _ := strings.Cut(user, ":")
		if n, err := strconv.Atoi(uid); err != nil || n == 0 {
			t.Errorf("final stage USER %q, want a numeric non-zero uid (runAsNonRoot cannot check a name)", user)
		}
		if got := final.last("ENTRYPOINT"); got != `["/graflow"]` {
			t.Errorf(`final stage ENTRYPOINT %s, want ["/graflow"]`, got)
		}
	})
}

func TestCompose(t *testing.T) {
	t.Parallel()
	var file struct {
		Services map[string]composeService `yaml:"services"`
		Volumes  map[string]any            `yaml:"volumes"`
	}
	decodeAll(t, "deploy/compose.yaml", func(d *yaml.Decoder) error { return d.Decode(&file) })
	image := builtImage(t)

	byCommand := map[string][]string{} // graflow command → services
	for name, s := range file.Services {
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("service %s publishes port %q: publish on 127.0.0.1 only (Redis has no password here)", name, p)
			}
		}
		if name == "redis" {
			continue
		}
		if len(s.Command) == 0 {
			t.Errorf("service %s: no command", name)
			continue
		}
		byCommand[s.Command[0]] = append(byCommand[s.Command[0]], name)
	}

	t.Run("redis appends every write to an AOF on a named volume and saves no snapshots", func(t *testing.T) {
		t.Parallel()
		redis, ok := file.Services["redis"]
		if !ok {
			t.Fatal("no redis service")
		}
		checkAOF(t, "service redis", redis.Command)
		if !slices.ContainsFunc(redis.Volumes, func(v string) bool {
			name, _, _ := strings.Cut(v, ":")
			_, named := file.Volumes[name]
			return named && strings.HasPrefix(strings.TrimPrefix(v, name+":"), "/data")
		}) {
			t.Errorf("redis volumes %v: want a named volume (top-level volumes:) on /data", redis.Volumes)
		}
	})
	t.Run("one projector and three workers run the built image, read-only, with REDIS_URL", func(t *testing.T) {
		t.Parallel()
		if n := len(byCommand["projector"]); n != 1 {
			t.Errorf("%d projector services %v, want 1", n, byCommand["projector"])
		}
		if n := len(byCommand["worker"]); n != 3 {
			t.Errorf("%d worker services %v, want 3", n, byCommand["worker"])
		}
		for name, s := range file.Services {
			if name == "redis" {
				continue
			}
			if s.Image != image {
				t.Errorf("service %s: image %q, want %q (scripts/graflow-image.sh)", name, s.Image, image)
			}
			if !s.ReadOnly {
				t.Errorf("service %s: read_only is not true", name)
			}
			if !strings.HasPrefix(s.Environment["REDIS_URL"], "redis://redis:") {
				t.Errorf("service %s: REDIS_URL %q, want the redis service", name, s.Environment["REDIS_URL"])
			}
		}
	})
	t.Run("a worker's stop_grace_period exceeds its drain", func(t *testing.T) {
		t.Parallel()
		for _, name := range byCommand["worker"] {
			s := file.Services[name]
			grace, err := time.ParseDuration(s.StopGracePeriod)
			if err != nil {
				t.Errorf("service %s: stop_grace_period %q: %v (Docker's default, 10 s, is shorter than any drain)", name, s.StopGracePeriod, err)
				continue
			}
			checkGrace(t, "service "+name, s.Command, grace)
		}
	})
	t.Run("every command and flag exists in graflow", func(t *testing.T) {
		t.Parallel()
		for name, s := range file.Services {
			if name != "redis" {
				checkArgs(t, "service "+name, s.Command)
			}
		}
	})
}

func TestKubernetes(t *testing.T) {
	t.Parallel()
	var kust struct {
		Resources []string `yaml:"resources"`
	}
	decodeAll(t, "deploy/k8s/kustomization.yaml", func(d *yaml.Decoder) error { return d.Decode(&kust) })
	files, err := filepath.Glob(filepath.Join(root, "deploy/k8s/*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var objects []k8sObject
	for _, f := range files {
		name := filepath.Base(f)
		if name == "kustomization.yaml" {
			continue
		}
		if !slices.Contains(kust.Resources, name) {
			t.Errorf("deploy/k8s/%s is not in kustomization.yaml's resources", name)
		}
		decodeAll(t, "deploy/k8s/"+name, func(d *yaml.Decoder) error {
			for {
				var o k8sObject
				if err := d.Decode(&o); errors.Is(err, io.EOF) {
					return nil
				} else if err != nil {
					return err
				}
				objects = append(objects, o)
			}
		})
	}
	for _, r := range kust.Resources {
		if !slices.Contains(files, filepath.Join(root, "deploy/k8s", r)) {
			t.Errorf("kustomization.yaml lists %s, which is not in deploy/k8s", r)
		}
	}
	image := builtImage(t)
	byKind := func(kind, name string) *k8sObject {
		for i := range objects {
			if objects[i].Kind == kind && objects[i].Metadata.Name == name {
				return &objects[i]
			}
		}
		t.Fatalf("no %s %s in deploy/k8s", kind, name)
		return nil
	}
	var workloads []*k8sObject
	for i := range objects {
		if k := objects[i].Kind; k == "Deployment" || k == "StatefulSet" {
			workloads = append(workloads, &objects[i])
		}
	}
	projector := byKind("StatefulSet", "graflow-projector")
	workers := byKind("Deployment", "graflow-worker")

	t.Run("every pod runs as non-root on a read-only root filesystem, within resources", func(t *testing.T) {
		t.Parallel()
		for _, w := range workloads {
			pod := w.Spec.Template.Spec
			for _, c := range pod.Containers {
				where := fmt.Sprintf("%s %s, container %s", w.Kind, w.Metadata.Name, c.Name)
				nonRoot := first(c.SecurityContext.RunAsNonRoot, pod.SecurityContext.RunAsNonRoot)
				uid := first(c.SecurityContext.RunAsUser, pod.SecurityContext.RunAsUser)
				if nonRoot == nil || !*nonRoot || uid == nil || *uid == 0 {
					t.Errorf("%s: want runAsNonRoot: true and a non-zero runAsUser", where)
				}
				sc := c.SecurityContext
				if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
					t.Errorf("%s: readOnlyRootFilesystem is not true", where)
				}
				if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
					t.Errorf("%s: allowPrivilegeEscalation is not false", where)
				}
				if !slices.Contains(sc.Capabilities.Drop, "ALL") {
					t.Errorf("%s: capabilities do not drop ALL", where)
				}
				if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
					t.Errorf("%s: want cpu and memory requests and a memory limit, have %+v", where, c.Resources)
				}
			}
		}
	})
	t.Run("graflow pods run the built image with REDIS_URL from the Secret", func(t *testing.T) {
		t.Parallel()
		secret := byKind("Secret", "graflow-redis")
		if !strings.HasPrefix(secret.StringData["REDIS_URL"], "redis") {
			t.Errorf("Secret graflow-redis: REDIS_URL %q", secret.StringData["REDIS_URL"])
		}
		config := byKind("ConfigMap", "graflow-config")
		if config.Data["GRAFLOW_NAMESPACE"] == "" {
			t.Error("ConfigMap graflow-config: no GRAFLOW_NAMESPACE")
		}
		for _, w := range []*k8sObject{projector, workers} {
			for _, c := range w.Spec.Template.Spec.Containers {
				where := fmt.Sprintf("%s %s, container %s", w.Kind, w.Metadata.Name, c.Name)
				if c.Image != image {
					t.Errorf("%s: image %q, want %q (scripts/graflow-image.sh)", where, c.Image, image)
				}
				var fromSecret, fromConfig bool
				for _, e := range c.EnvFrom {
					fromSecret = fromSecret || e.SecretRef.Name == "graflow-redis"
					fromConfig = fromConfig || e.ConfigMapRef.Name == "graflow-config"
				}
				if !fromSecret || !fromConfig {
					t.Errorf("%s: envFrom %+v, want the Secret graflow-redis and the ConfigMap graflow-config", where, c.EnvFrom)
				}
			}
		}
	})
	t.Run("the worker's termination grace period exceeds its drain", func(t *testing.T) {
		t.Parallel()
		pod := workers.Spec.Template.Spec
		if pod.TerminationGracePeriodSeconds == nil {
			t.Fatal("graflow-worker: no terminationGracePeriodSeconds (the default, 30 s, is the drain timeout alone)")
		}
		grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
		for _, c := range pod.Containers {
			checkGrace(t, "graflow-worker", c.Args, grace)
		}
	})
	t.Run("redis appends every write to an AOF on a persistent volume", func(t *testing.T) {
		t.Parallel()
		redis := byKind("StatefulSet", "graflow-redis")
		for _, c := range redis.Spec.Template.Spec.Containers {
			checkAOF(t, "graflow-redis", c.Command)
			if !slices.ContainsFunc(c.VolumeMounts, func(m volumeMount) bool { return m.MountPath == "/data" }) ||
				!slices.ContainsFunc(redis.Spec.VolumeClaimTemplates, func(v volumeClaim) bool { return v.Metadata.Name == "data" }) {
				t.Errorf("graflow-redis: want the volume claim template data mounted on /data")
			}
		}
	})
	t.Run("projectors have a stable id", func(t *testing.T) {
		t.Parallel()
		for _, c := range projector.Spec.Template.Spec.Containers {
			if !slices.Contains(c.Args, "$(POD_NAME)") {
				t.Errorf("graflow-projector: args %v, want --id $(POD_NAME) (a StatefulSet's pod names are stable)", c.Args)
			}
		}
	})
	t.Run("projector and workers serve metrics and are probed on /healthz and /readyz", func(t *testing.T) {
		t.Parallel()
		for _, w := range []*k8sObject{projector, workers} {
			for _, c := range w.Spec.Template.Spec.Containers {
				where := fmt.Sprintf("%s %s, container %s", w.Kind, w.Metadata.Name, c.Name)
				i := slices.Index(c.Args, "--metrics-addr")
				port := 0
				for _, p := range c.Ports {
					if p.Name == "metrics" {
						port = p.ContainerPort
					}
				}
				if i < 0 || i+1 >= len(c.Args) || port == 0 || c.Args[i+1] != fmt.Sprintf(":%d", port) {
					t.Errorf("%s: want --metrics-addr :P with P the container port named metrics (args %v)", where, c.Args)
				}
				for _, pr := range []struct {
					name string
					p    *probe
					path string
				}{{"livenessProbe", c.LivenessProbe, "/healthz"}, {"readinessProbe", c.ReadinessProbe, "/readyz"}} {
					if pr.p == nil || pr.p.HTTPGet.Path != pr.path || pr.p.HTTPGet.Port != "metrics" {
						t.Errorf("%s: want a %s on %s of the metrics port, have %+v", where, pr.name, pr.path, pr.p)
					}
				}
			}
		}
	})
	t.Run("every command and flag exists in graflow", func(t *testing.T) {
		t.Parallel()
		for _, w := range []*k8sObject{projector, workers} {
			for _, c := range w.Spec.Template.Spec.Containers {
				checkArgs(t, w.Metadata.Name, c.Args)
			}
		}
	})
}

// checkGrace fails unless grace exceeds the drain timeout that the worker
// args set (worker.DefaultDrainTimeout without --drain-timeout) plus
// workerStopAfterDrain.
func checkGrace(t *testing.T, where string, args []string, grace time.Duration) {
	t.Helper()
	drain := worker.DefaultDrainTimeout
	for i, a := range args {
		name, v, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name != "drain-timeout" || !strings.HasPrefix(a, "-") {
			continue
		}
		if !hasValue && i+1 < len(args) {
			v = args[i+1]
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Errorf("%s: --drain-timeout %q: %v", where, v, err)
			return
		}
		drain = d
	}
	if grace <= drain+workerStopAfterDrain {
		t.Errorf("%s: grace period %v, want more than drain timeout %v + %v", where, grace, drain, workerStopAfterDrain)
	}
}

// checkAOF fails unless the redis-server command line turns the AOF on in
// /data and RDB snapshots off.
func checkAOF(t *testing.T, where string, command []string) {
	t.Helper()
	args := strings.Join(command, " ") + " "
	for _, want := range []string{"--appendonly yes ", "--dir /data ", "--save  "} {
		if !strings.Contains(args, want) {
			t.Errorf("%s: redis command %q lacks %q", where, args, want)
		}
	}
}

// checkArgs runs the graflow binary with args and -h: graflow parses every
// flag before it prints the command's help and exits 0, so an unknown
// command or flag, or a bad value, exits non-zero.
func checkArgs(t *testing.T, where string, args []string) {
	t.Helper()
	cmd := exec.Command(graflowBinary(t), append(slices.Clone(args), "-h")...)
	cmd.Env = []string{} // the defaults; no REDIS_URL is needed to parse
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("%s: graflow %s -h: %v\n%s", where, strings.Join(args, " "), err, firstLines(out, 5))
	}
}

var graflowBuild struct {
	once sync.Once
	path string
	err  error
}

// graflowBinary builds ./cmd/graflow once per test binary.
func graflowBinary(t *testing.T) string {
	t.Helper()
	graflowBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "graflow-deploy-test-")
		if err != nil {
			graflowBuild.err = err
			return
		}
		path := filepath.Join(dir, "graflow")
		cmd := exec.Command("go", "build", "-o", path, "./cmd/graflow")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			graflowBuild.err = fmt.Errorf("go build ./cmd/graflow: %w\n%s", err, out)
			return
		}
		graflowBuild.path = path
	})
	if graflowBuild.err != nil {
		t.Fatal(graflowBuild.err)
	}
	return graflowBuild.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if graflowBuild.path != "" {
		_ = os.RemoveAll(filepath.Dir(graflowBuild.path))
	}
	os.Exit(code)
}

type composeService struct {
	Image           string            `yaml:"image"`
	Command         []string          `yaml:"command"`
	Environment     map[string]string `yaml:"environment"`
	StopGracePeriod string            `yaml:"stop_grace_period"`
	ReadOnly        bool              `yaml:"read_only"`
	Ports           []string          `yaml:"ports"`
	Volumes         []string          `yaml:"volumes"`
}

// k8sObject holds the fields of the manifests that the tests read.
type k8sObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Spec       struct {
		Template struct {
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
		VolumeClaimTemplates []volumeClaim `yaml:"volumeClaimTemplates"`
	} `yaml:"spec"`
}

type volumeClaim struct {
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
}

type volumeMount struct {
	Name      string `yaml:"name"`
	MountPath string `yaml:"mountPath"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int64          `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               securityContext `yaml:"securityContext"`
	Containers                    []k8sContainer  `yaml:"containers"`
}

type k8sContainer struct {
	Name         string        `yaml:"name"`
	Image        string        `yaml:"image"`
	Command      []string      `yaml:"command"`
	Args         []string      `yaml:"args"`
	VolumeMounts []volumeMount `yaml:"volumeMounts"`
	EnvFrom      []struct {
		ConfigMapRef struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
		SecretRef struct {
			Name string `yaml:"name"`
		} `yaml:"secretRef"`
	} `yaml:"envFrom"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext securityContext `yaml:"securityContext"`
	Ports           []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
}

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

type securityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	Capabilities             struct {
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
}

// dockerStage is one FROM of a Dockerfile and its instructions (comments
// dropped, continuation lines joined).
type dockerStage struct {
	from  string // the image, without "AS name"
	lines []string
}

// last returns the argument of the stage's last instruction named instr.
func (s dockerStage) last(instr string) string {
	for _, l := range slices.Backward(s.lines) {
		if name, arg, _ := strings.Cut(l, " "); strings.EqualFold(name, instr) {
			return strings.TrimSpace(arg)
		}
	}
	return ""
}

func dockerStages(t *testing.T, dockerfile string) []dockerStage {
	t.Helper()
	var stages []dockerStage
	var cont string
	sc := bufio.NewScanner(strings.NewReader(dockerfile))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(l, `\`); ok {
			cont += s + " "
			continue
		}
		l, cont = cont+l, ""
		name, arg, _ := strings.Cut(l, " ")
		if strings.EqualFold(name, "FROM") {
			image, _, _ := strings.Cut(strings.TrimSpace(arg), " ")
			stages = append(stages, dockerStage{from: image})
			continue
		}
		if len(stages) > 0 {
			stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, l)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages
}

func readFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// decodeAll hands decode a YAML decoder on the file rel (from the
// repository's root).
func decodeAll(t *testing.T, rel string, decode func(*yaml.Decoder) error) {
	t.Helper()
	d := yaml.NewDecoder(strings.NewReader(readFile(t, rel)))
	if err := decode(d); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
}

func first[T any](ps ...*T) *T {
	for _, p := range ps {
		if p != nil {
			return p
		}
	}
	return nil
}

func firstLines(b []byte, n int) []byte {
	lines := bytes.SplitAfterN(b, []byte("\n"), n+1)
	return bytes.Join(lines[:min(n, len(lines))], nil)
}
