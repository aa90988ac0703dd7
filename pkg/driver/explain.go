package driver

import (
	"errors"
	"fmt"
	"net"

	"github.com/modelcast/modelcast/pkg/ossclient"
)

// errNodeConfig marks an error the node's own configuration causes (FailedPrecondition): no
// attribute of the volume is wrong, and every retry meets it until the node is fixed.
var errNodeConfig = errors.New("node configuration")

// nodeConfigError is an error of the node's configuration; its message is its cause's.
type nodeConfigError struct{ err error }

func (e *nodeConfigError) Error() string   { return e.err.Error() }
func (e *nodeConfigError) Unwrap() []error { return []error{errNodeConfig, e.err} }

// endpointError says where an endpoint whose host name does not resolve came from (err is
// then ErrInvalidConfig with a *net.DNSError): a volume attribute (InvalidArgument: the volume
// must change) or the node's default (FailedPrecondition: the node must). endpoint is the
// normalized endpoint used. Other errors are returned as they are.
func (r *resolver) endpointError(spec VolumeSpec, endpoint string, err error) error {
	var dns *net.DNSError
	if !errors.Is(err, ossclient.ErrInvalidConfig) || !errors.As(err, &dns) {
		return err
	}
	switch {
	case spec.Endpoint != "":
		return fmt.Errorf("volume attribute %s %q: %w", AttrEndpoint, spec.Endpoint, err)
	case r.base.Endpoint == "" && spec.Region != "":
		return fmt.Errorf("volume attribute %s %q (the endpoint %s is derived from it, as the node sets no %s): %w",
			AttrRegion, spec.Region, endpoint, ossclient.EnvEndpoint, err)
	case r.base.Endpoint == "":
		return &nodeConfigError{fmt.Errorf("the node's default endpoint %s (derived from its %s; the chart's oss.region): %w",
			endpoint, ossclient.EnvRegion, err)}
	}
	return &nodeConfigError{fmt.Errorf("the node's default endpoint %s (its %s; the chart's oss.endpoint): %w", endpoint, ossclient.EnvEndpoint, err)}
}

// refusedSecret describes credentials of a CreateVolume's secret (the provisioner secret) that
// OSS refused (err is ErrAccessDenied), naming the secret and the access key ID (masked), never
// the secret's values; nil when the credentials did not come from the secret.
func refusedSecret(secrets map[string]string, err error) error {
	creds, ok, cerr := credentialsFrom(secrets)
	if !ok || cerr != nil || !errors.Is(err, ossclient.ErrAccessDenied) {
		return nil
	}
	var r *refusedError
	if errors.As(err, &r) {
		err = r.err // said here for the provisioner secret instead
	}
	return fmt.Errorf("the credentials of the provisioner secret (csi.storage.k8s.io/provisioner-secret-name in the StorageClass), %s, were refused by OSS: %w", creds, err)
}

// refusedModelCacheSecret describes credentials of a ModelCache's secret (spec.secretRef)
// that OSS refused (err is ErrAccessDenied), naming the secret (whose) and the access key ID
// (masked), never the secret's values. Other errors are returned as they are.
func refusedModelCacheSecret(whose string, creds ossclient.Credentials, err error) error {
	if !errors.Is(err, ossclient.ErrAccessDenied) {
		return err
	}
	var r *refusedError
	if errors.As(err, &r) {
		err = r.err // said here for the ModelCache's secret instead of a volume's
	}
	return fmt.Errorf("the credentials of %s, %s, were refused by OSS: %w", whose, creds, err)
}

// refusedCredentials says whose credentials OSS refused when a listing is denied (err is
// ErrAccessDenied): the volume's secret (nodePublishSecretRef), the node's own
// (OSS_ACCESS_KEY_ID; the chart's oss.existingSecret or oss.accessKeyId), or none at all. The
// access key ID is masked; no secret value is ever printed. Other errors are returned as they
// are.
func refusedCredentials(cfg ossclient.Config, fromSecret bool, err error) error {
	if !errors.Is(err, ossclient.ErrAccessDenied) {
		return err
	}
	return &refusedError{creds: cfg.Credentials, fromSecret: fromSecret, err: err}
}

// refusedError is a listing OSS denied, with whose credentials it was made.
type refusedError struct {
	creds      ossclient.Credentials
	fromSecret bool
	err        error
}

func (e *refusedError) Error() string {
	switch {
	case e.fromSecret:
		return fmt.Sprintf("the credentials of the volume's secret (nodePublishSecretRef), %s, were refused by OSS: %v", e.creds, e.err)
	case e.creds.Anonymous():
		return fmt.Sprintf("anonymous access (the volume has no secret and the node no %s) was refused by OSS: %v", ossclient.EnvAccessKeyID, e.err)
	}
	return fmt.Sprintf("the node's credentials (its %s; the chart's oss.existingSecret or oss.accessKeyId), %s, were refused by OSS: %v", ossclient.EnvAccessKeyID, e.creds, e.err)
}

func (e *refusedError) Unwrap() error { return e.err }
