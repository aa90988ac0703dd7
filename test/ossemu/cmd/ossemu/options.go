package main

import (
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/modelcast/modelcast/test/ossemu"
)

// options are the command's flags.
type options struct {
	listen           string
	region           string
	accessKeyID      string
	accessKeySecret  string
	securityToken    string
	buckets          stringList
	publicRead       bool
	generate         stringList
	generateDir      string
	load             stringList
	egressRate       string
	profile          string
	firstByteLatency string
	connRate         string
	addrFile         string

	// Parsed by validate.
	egressBytesPerSec int64
	speed             ossemu.Profile // --profile with --first-byte-latency and --conn-rate applied
	models            []modelFlag
	loads             []loadFlag
}

// modelFlag is one --generate bucket/prefix/=SIZE.
type modelFlag struct {
	bucket, prefix string
	size           int64
}

// loadFlag is one --load bucket/prefix/=DIR.
type loadFlag struct {
	bucket, prefix, dir string
}

type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

func defaultOptions() *options { return &options{listen: "127.0.0.1:0"} }

func (o *options) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.listen, "listen", o.listen, "address to listen on")
	fs.StringVar(&o.region, "region", o.region, "region V4 signatures must be scoped to (empty: any)")
	fs.StringVar(&o.accessKeyID, "access-key-id", o.accessKeyID, "accepted access key ID (default $OSS_ACCESS_KEY_ID; none: no authentication)")
	fs.StringVar(&o.accessKeySecret, "access-key-secret", o.accessKeySecret, "its secret (default $OSS_ACCESS_KEY_SECRET)")
	fs.StringVar(&o.securityToken, "security-token", o.securityToken, "STS token requests must carry (default $OSS_SESSION_TOKEN)")
	fs.Var(&o.buckets, "bucket", "create this bucket (repeatable)")
	fs.BoolVar(&o.publicRead, "public-read", o.publicRead, "make every bucket created from flags public-read")
	fs.Var(&o.generate, "generate", "generate a synthetic model, bucket/prefix/=SIZE such as models/llama/=4GiB (repeatable)")
	fs.StringVar(&o.generateDir, "generate-dir", o.generateDir, "write generated models to DIR/bucket/prefix and serve them from disk (default: in memory)")
	fs.Var(&o.load, "load", "serve the files of a directory, bucket/prefix/=DIR (repeatable)")
	fs.StringVar(&o.egressRate, "egress-rate", o.egressRate, "limit GET bodies to this many bytes/s in total, such as 125MB or 1Gbit (default unlimited)")
	fs.StringVar(&o.profile, "profile", o.profile, "answer like this: "+ossemu.LoopbackProfile+" (no latency, no per-connection cap) or "+
		ossemu.ObjectStoreProfile+" (20ms first-byte latency, 50MB/s per connection); the two flags below override its values (default "+ossemu.LoopbackProfile+")")
	fs.StringVar(&o.firstByteLatency, "first-byte-latency", o.firstByteLatency, "delay every response's first byte by this duration, such as 20ms (default: the profile's)")
	fs.StringVar(&o.connRate, "conn-rate", o.connRate, "limit GET bodies to this many bytes/s per TCP connection, such as 50MB or 400Mbit; 0 is unlimited (default: the profile's)")
	fs.StringVar(&o.addrFile, "addr-file", o.addrFile, "write the endpoint URL to this file once listening")
}

// validate checks the flags, fills credentials from the environment and
// parses the structured flags.
func (o *options) validate(getenv func(string) string) error {
	if o.accessKeyID == "" {
		o.accessKeyID = getenv("OSS_ACCESS_KEY_ID")
	}
	if o.accessKeySecret == "" {
		o.accessKeySecret = getenv("OSS_ACCESS_KEY_SECRET")
	}
	if o.securityToken == "" {
		o.securityToken = getenv("OSS_SESSION_TOKEN")
	}
	var errs []error
	if (o.accessKeyID == "") != (o.accessKeySecret == "") {
		errs = append(errs, errors.New("--access-key-id and --access-key-secret go together"))
	}
	if o.securityToken != "" && o.accessKeyID == "" {
		errs = append(errs, errors.New("--security-token needs --access-key-id"))
	}
	if o.egressRate != "" {
		bps, err := ossemu.ParseRate(o.egressRate)
		if err != nil {
			errs = append(errs, fmt.Errorf("--egress-rate: %w", err))
		}
		o.egressBytesPerSec = bps
	}
	errs = append(errs, o.parseProfile()...)
	for _, g := range o.generate {
		bucket, prefix, value, err := splitTarget(g)
		if err != nil {
			errs = append(errs, fmt.Errorf("--generate: %w", err))
			continue
		}
		if !filepath.IsLocal(filepath.Join(bucket, filepath.FromSlash(prefix))) {
			errs = append(errs, fmt.Errorf("--generate %s: bucket/prefix must stay inside --generate-dir", g))
			continue
		}
		size, err := ossemu.ParseSize(value)
		if err != nil {
			errs = append(errs, fmt.Errorf("--generate %s: %w", g, err))
			continue
		}
		o.models = append(o.models, modelFlag{bucket: bucket, prefix: prefix, size: size})
	}
	for _, l := range o.load {
		bucket, prefix, dir, err := splitTarget(l)
		if err != nil {
			errs = append(errs, fmt.Errorf("--load: %w", err))
			continue
		}
		o.loads = append(o.loads, loadFlag{bucket: bucket, prefix: prefix, dir: dir})
	}
	return errors.Join(errs...)
}

// parseProfile sets o.speed from --profile, --first-byte-latency and
// --conn-rate.
func (o *options) parseProfile() []error {
	var errs []error
	o.speed = ossemu.Profile{}
	if o.profile != "" {
		p, err := ossemu.ProfileByName(o.profile)
		if err != nil {
			errs = append(errs, fmt.Errorf("--profile: %w", err))
		}
		o.speed = p
	}
	if o.firstByteLatency != "" {
		d, err := time.ParseDuration(o.firstByteLatency)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("--first-byte-latency: %w", err))
		case d < 0:
			errs = append(errs, fmt.Errorf("--first-byte-latency %s is negative", o.firstByteLatency))
		default:
			o.speed.FirstByteLatency = d
		}
	}
	if o.connRate != "" {
		bps, err := ossemu.ParseRate(o.connRate)
		if err != nil {
			errs = append(errs, fmt.Errorf("--conn-rate: %w", err))
		} else {
			o.speed.ConnBytesPerSec = bps
		}
	}
	return errs
}

// splitTarget splits "bucket/prefix/=VALUE".
func splitTarget(s string) (bucket, prefix, value string, err error) {
	i := strings.LastIndex(s, "=")
	if i < 0 {
		return "", "", "", fmt.Errorf("%q is not bucket/prefix/=VALUE", s)
	}
	path, value := s[:i], s[i+1:]
	bucket, prefix, _ = strings.Cut(path, "/")
	if bucket == "" || value == "" {
		return "", "", "", fmt.Errorf("%q is not bucket/prefix/=VALUE", s)
	}
	return bucket, prefix, value, nil
}

// serverOptions are the emulator's options.
func (o *options) serverOptions() ossemu.Options {
	opts := ossemu.Options{Region: o.region, EgressBytesPerSec: o.egressBytesPerSec, Admin: true}
	opts.ApplyProfile(o.speed)
	if o.accessKeyID != "" {
		opts.Credentials = []ossemu.Credential{{
			AccessKeyID: o.accessKeyID, AccessKeySecret: o.accessKeySecret, SecurityToken: o.securityToken,
		}}
	}
	return opts
}
