// Package v1alpha1 is the chat.gochat.io/v1alpha1 API: the ChatCluster resource.
// +kubebuilder:object:generate=true
// +groupName=chat.gochat.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the group and version of this API.
var GroupVersion = schema.GroupVersion{Group: "chat.gochat.io", Version: "v1alpha1"}

var (
	// SchemeBuilder registers this API's types.
	SchemeBuilder = runtime.NewSchemeBuilder(func(s *runtime.Scheme) error {
		s.AddKnownTypes(GroupVersion, &ChatCluster{}, &ChatClusterList{})
		metav1AddToGroupVersion(s)
		return nil
	})
	// AddToScheme adds this API's types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
