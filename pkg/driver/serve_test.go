package driver_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/modelcast/modelcast/pkg/driver"
)

// TestWhileServing runs a hook beside the CSI endpoint: it starts once the endpoint answers,
// its context ends with serving, Serve waits for it, and its error stops the driver.
func TestWhileServing(t *testing.T) {
	serve := func(t *testing.T, ctx context.Context, hook func(ctx context.Context, identity csi.IdentityClient) error) <-chan error {
		t.Helper()
		sock := filepath.Join(t.TempDir(), "csi.sock")
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		identity := csi.NewIdentityClient(conn)
		d, err := driver.New(driver.Options{
			Mode: driver.ModeController, Endpoint: "unix://" + sock,
			WhileServing: func(ctx context.Context) error { return hook(ctx, identity) },
		})
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- d.Serve(ctx) }()
		return served
	}
	wait := func(t *testing.T, served <-chan error) error {
		t.Helper()
		select {
		case err := <-served:
			return err
		case <-time.After(20 * time.Second):
			t.Fatal("Serve did not return")
			return nil
		}
	}

	t.Run("runs while serving", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		probed := make(chan error, 1)
		var returned bool
		served := serve(t, ctx, func(ctx context.Context, identity csi.IdentityClient) error {
			pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
			defer pcancel()
			// The endpoint answers at once: no retry, no wait for readiness.
			_, err := identity.Probe(pctx, &csi.ProbeRequest{})
			probed <- err
			<-ctx.Done()
			returned = true
			return nil
		})
		select {
		case err := <-probed:
			if err != nil {
				t.Errorf("the hook could not probe the endpoint: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the hook did not run")
		}
		cancel()
		if err := wait(t, served); err != nil {
			t.Errorf("Serve: %v", err)
		}
		if !returned {
			t.Error("Serve returned before the hook")
		}
	})

	t.Run("an error stops the driver", func(t *testing.T) {
		errHook := errors.New("hook failed")
		served := serve(t, t.Context(), func(context.Context, csi.IdentityClient) error { return errHook })
		if err := wait(t, served); !errors.Is(err, errHook) {
			t.Errorf("Serve = %v, want the hook's error", err)
		}
	})
}
