package prewarm

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Errors of a ModelCache's secret (spec.secretRef); ReasonFor names them.
var (
	// ErrSecretNotFound: the Secret does not exist in the ModelCache's namespace.
	ErrSecretNotFound = errors.New("secret not found")
	// ErrSecretForbidden: the node plugin may not read Secrets in the ModelCache's namespace.
	ErrSecretForbidden = errors.New("secret forbidden")
	// ErrInvalidSecret: the Secret's keys are not OSS credentials. The Cache says so (it
	// knows which keys credentials take), wrapping this.
	ErrInvalidSecret = errors.New("invalid secret")
)

// SecretNamespacesValue is the chart value that lets the node plugin read Secrets (get, never
// list or watch) in the namespaces it lists.
const SecretNamespacesValue = "modelCache.secretNamespaces"

// secretTimeout bounds one read of a ModelCache's secret.
const secretTimeout = 30 * time.Second

// Secret is the Secret a ModelCache's spec.secretRef names, read for one staging attempt.
// Data holds credentials: String, GoString and MarshalLog print only the Secret's name.
type Secret struct {
	Namespace, Name string
	Data            map[string]string
}

// String names the Secret ("secret ml/oss"), never its data.
func (s *Secret) String() string { return "secret " + s.Namespace + "/" + s.Name }

// GoString keeps %#v from printing the data.
func (s *Secret) GoString() string { return "prewarm.Secret{" + s.Namespace + "/" + s.Name + "}" }

// MarshalLog keeps structured loggers (klog, logr) from printing the data.
func (s *Secret) MarshalLog() any { return s.String() }

// secretError is an error of a ModelCache's secret: one of the sentinels above (kind), with a
// message that says what to do, and the API server's error (cause).
type secretError struct {
	kind  error
	msg   string
	cause error
}

func (e *secretError) Error() string   { return e.msg }
func (e *secretError) Unwrap() []error { return []error{e.kind, e.cause} }

// readSecret gets the Secret namespace/name with the node's client: only a get, as the chart
// grants (the node plugin may not list or watch Secrets anywhere, nor get them outside the
// namespaces it lists). The Secret's data become strings, as kubelet hands a volume's
// nodePublishSecretRef to a CSI driver.
func readSecret(ctx context.Context, kube kubernetes.Interface, namespace, name string) (*Secret, error) {
	ref := fmt.Sprintf("secret %s/%s (spec.secretRef)", namespace, name)
	if kube == nil {
		return nil, fmt.Errorf("read %s: the node plugin has no Kubernetes client", ref)
	}
	ctx, cancel := context.WithTimeout(ctx, secretTimeout)
	defer cancel()
	s, err := kube.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, &secretError{kind: ErrSecretNotFound, cause: err, msg: fmt.Sprintf(
			"%s does not exist: create it in namespace %s with the keys akId and akSecret (and securityToken for STS credentials), or remove spec.secretRef to stage with the node plugin's own credentials",
			ref, namespace)}
	case apierrors.IsForbidden(err):
		return nil, &secretError{kind: ErrSecretForbidden, cause: err, msg: fmt.Sprintf(
			"the node plugin is not allowed to read Secrets in namespace %s, so it cannot read %s: add %s to the chart's %s (it grants the node plugin get on Secrets there), or remove spec.secretRef to stage with the node plugin's own credentials (%v)",
			namespace, ref, namespace, SecretNamespacesValue, err)}
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", ref, err)
	}
	data := make(map[string]string, len(s.Data))
	for k, v := range s.Data {
		data[k] = string(v)
	}
	return &Secret{Namespace: namespace, Name: name, Data: data}, nil
}
